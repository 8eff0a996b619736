"""Low-bit weight variants for fitted blocks: binarized and k-bit, trained with a straight-through estimator.

The bound of a low-bit variant says what a low-bit layer could achieve locally (the paper's setting). Every
Linear weight of a fitted block is quantized per output channel (row); RMSNorm gains stay in full precision.
- binary: sign(w) * mean|w| of the row (sign(0) counts as +1), so exactly 2 levels per row.
- <k>bit: symmetric uniform, scale = max|w| / (2^(k-1) - 1), levels -Q..Q with Q = 2^(k-1) - 1, so at most
  2^k - 1 <= 2^k levels per row.
During fitting the latent fp weight is kept and the forward sees its quantized value; the gradient passes
straight through. `bake` then replaces each latent weight by its quantized value.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


def quantize(w: torch.Tensor, bits: int) -> torch.Tensor:
    """The quantized value of a weight matrix [out, in], per output channel."""
    if bits == 1:
        scale = w.abs().mean(dim=1, keepdim=True)
        return torch.where(w >= 0, scale, -scale)
    q = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / q
    return torch.clamp(torch.round(w / scale), -q, q) * scale


class _StraightThrough(torch.autograd.Function):
    """Forward the exact quantized value (w + (q - w).detach() would round to q +- 1 ulp); identity backward."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, bits: int) -> torch.Tensor:
        return quantize(w, bits)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _Quantized(nn.Module):
    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(w, self.bits)


def attach(block: nn.Module, bits: int | None) -> None:
    """Make every Linear weight of `block` quantized in the forward (no-op for fp)."""
    if bits is None:
        return
    for module in block.modules():
        if isinstance(module, nn.Linear):
            parametrize.register_parametrization(module, "weight", _Quantized(bits))


def bake(block: nn.Module) -> None:
    """Replace each latent weight by its quantized value and drop the parametrizations."""
    for module in block.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def latent_weight(linear: nn.Linear) -> torch.Tensor:
    """The weight an optimizer or solver should write: the latent one when quantized, else the weight itself."""
    if parametrize.is_parametrized(linear, "weight"):
        return linear.parametrizations.weight.original
    return linear.weight
