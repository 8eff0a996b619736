"""Carrying Adam moments through a growth mapping, so a grown run may keep its optimizer state.

Rule (the same for every operator): a moment tensor goes through the parameter's index mapping and is then
scaled by the factor the *gradient* picks up under that mapping at the grown point: first moments (`exp_avg`,
any other parameter-shaped key) by s, second moments (keys ending in `_sq`) by s**2. Scalars (`step`) are
copied. Moments are running statistics of gradients, so mapping them as the gradients map keeps the EMA
consistent with the gradients the grown model will produce: for a function-preserving width operator at the
grown point, exp_avg' equals what the grown model's gradient would be wherever exp_avg was the small model's
gradient (tests check this). It is *not* the weight's own split factor: Net2Net splits a copied unit's
*outgoing* weights by 1/c, but it is the copies' *incoming* weights whose gradients shrink by 1/c (each copy
receives 1/c of the downstream gradient). Either way m/sqrt(v) -- Adam's step -- is unchanged per element.
New parameters that exist in no source (fresh blocks, off-diagonal fusion blocks) start at zero moments,
as with a fresh optimizer.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor


def map_moments(entries: Sequence[dict[str, Tensor]], transform: Callable[..., Tensor],
                grad_scale: Tensor | float = 1.0) -> dict[str, Tensor]:
    """One parameter's optimizer tensors, mapped by `transform` (the same one that maps its weights, taking one
    tensor per source) and scaled by `grad_scale` (first moments) or its square (second moments)."""
    out: dict[str, Tensor] = {}
    for key, first in entries[0].items():
        if first.dim() == 0:
            out[key] = first.clone()
        else:
            power = 2 if key.endswith("_sq") else 1
            mapped = transform(*(e[key] for e in entries))
            out[key] = (mapped * grad_scale**power).to(mapped.dtype)
    return out


def fresh_moments(template: dict[str, Tensor]) -> dict[str, Tensor]:
    """Zero optimizer tensors (and step 0) for a parameter no source had, shaped and keyed like `template`."""
    return {k: torch.zeros_like(v) for k, v in template.items()}
