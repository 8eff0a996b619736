"""Hidden-state displacement Psi_l and jump rate zeta_l (docs/methods.md §1), shared by JREG and the monitors.

Pure functions of tensors, computed in at least fp32 whatever the hidden states' dtype, so the monitor,
`scripts/jump_profile.py` and the regularizer agree to the last digit when given the same states.
Layer indices are 1-based as in the paper: Psi_l compares h_{l-1} with h_l, profile[l - 1] = Psi_l.
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch
from torch import Tensor

from regularizers.tokens import compute_dtype, masked_mean

Form = Literal["cosine", "angular"]
FORMS: tuple[str, ...] = ("cosine", "angular")

_ANGULAR_EPS = 1e-6
"""arccos' derivative is infinite at cos = +-1 (a layer that leaves a token unchanged); the gradient is taken
at cos clamped to [-1 + eps, 1 - eps], while the value stays exact."""


def cosine(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """cos of the angle between a and b along the last dim, as F.cosine_similarity defines it (the norms'
    product clamped at eps) in half its forward+backward time: one dot and two norms, no normalized copies."""
    norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
    return torch.linalg.vecdot(a, b) / norms.clamp_min(eps)


def displacement(h_prev: Tensor, h_next: Tensor, mask: Optional[Tensor] = None, form: Form = "cosine") -> Tensor:
    """Mean over real tokens of (1 - cos)/2 ("cosine") or arccos(cos)/pi ("angular"); both in [0, 1]."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    dtype = compute_dtype(h_prev, h_next)
    cos = cosine(h_prev.to(dtype), h_next.to(dtype))
    if form == "cosine":
        per_token = (1.0 - cos) / 2.0
    else:
        safe = torch.acos(cos.clamp(-1.0 + _ANGULAR_EPS, 1.0 - _ANGULAR_EPS))
        exact = torch.acos(cos.detach().clamp(-1.0, 1.0))
        per_token = (safe + (exact - safe.detach())) / math.pi
    return masked_mean(per_token, mask)


def displacement_profile(
    hidden_states: Sequence[Tensor],
    mask: Optional[Tensor] = None,
    form: Form = "cosine",
    final: Optional[Tensor] = None,
) -> Tensor:
    """Psi_1..Psi_L [L] from h_0..h_L; `final` (norm(h_L)) replaces h_L for the `final_norm: include` view."""
    if len(hidden_states) < 2:
        raise ValueError(f"need h_0..h_L with L >= 1, got {len(hidden_states)} hidden state(s)")
    states = list(hidden_states)
    if final is not None:
        states[-1] = final
    return torch.stack([displacement(a, b, mask, form) for a, b in zip(states[:-1], states[1:])])


def jump_rate(profile: Tensor, l: int) -> Tensor:
    """zeta_l = 100 * sum_{k=l..L} max(0, Psi_k - Psi_{k-1}): the total rise of the profile from layer l on."""
    n_layers = profile.shape[-1]
    if not 2 <= l <= n_layers:
        raise ValueError(f"jump rate needs 2 <= l <= L={n_layers} (Psi_0 does not exist), got l={l}")
    profile = profile.to(compute_dtype(profile))
    rises = profile[..., l - 1 :] - profile[..., l - 2 : -1]
    return 100.0 * rises.clamp_min(0.0).sum(-1)


def zeta_final(profile: Tensor) -> Tensor:
    """zeta_L = 100 * max(0, Psi_L - Psi_{L-1}): the headline jump strength at the last layer."""
    return jump_rate(profile, profile.shape[-1])
