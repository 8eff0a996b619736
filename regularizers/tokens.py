"""Averages over real (non-padding) tokens, in at least fp32: every metric and penalty here reduces this way."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """fp32 for bf16/fp16/fp32 inputs, fp64 kept (so float64 gradient checks stay exact)."""
    dtype = torch.float32
    for x in tensors:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def masked_mean(values: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean of `values` [B, T] over positions where `mask` is True (all if None); 0 if there are none.

    `where`, not multiplication, so non-finite values at padded positions cannot leak in as NaN.
    """
    if mask is None:
        return values.mean()
    if mask.shape != values.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the token grid {tuple(values.shape)}")
    mask = mask.bool()
    total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    return total / mask.sum().clamp_min(1)
