"""Low-bit weights: binary and k-bit quantization per output channel, trained with a straight-through estimator.

- binary (bits=1): sign(w) * mean|w| of the row (sign(0) counts as +1): exactly 2 levels per row (1 if the
  row is all zeros).
- k-bit (2 <= bits <= 16): symmetric uniform, scale = max|w| / Q with Q = 2^(k-1) - 1, levels -Q..Q: 2^k - 1
  levels per row (zero is one of them), so at most 2^k.
The latent full-precision weight is what the optimizer updates; the forward sees its quantized value and the
gradient passes straight through to the latent weight (BinaryConnect; BitNet trains its linear layers so).
`QuantLinear` is an nn.Linear whose `bits` switch this on, with the same parameter and state-dict names, so
checkpoints, ZeRO-3 partitioning (the module owns its weight, so DeepSpeed gathers it for the forward) and
conversion are unchanged. `bake` writes the quantized values into the weights: the deployed model.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from model.config import QUANT_SCOPES, QuantizationConfig


@torch.no_grad()
def quantize(w: torch.Tensor, bits: int) -> torch.Tensor:
    """The quantized value of a weight matrix [out, in], per output channel, computed in fp32, in w's dtype."""
    x = w.float()
    if bits == 1:
        scale = x.abs().mean(dim=1, keepdim=True)
        return torch.where(x >= 0, scale, -scale).to(w.dtype)
    q = 2 ** (bits - 1) - 1
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / q
    return (torch.clamp(torch.round(x / scale), -q, q) * scale).to(w.dtype)


class _StraightThrough(torch.autograd.Function):
    """Forward the exact quantized value (w + (q - w).detach() would round to q +- 1 ulp); identity backward."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, bits: int) -> torch.Tensor:
        return quantize(w, bits)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def fake_quantize(w: torch.Tensor, bits: int) -> torch.Tensor:
    """quantize(w) in the forward, the identity in the backward."""
    return _StraightThrough.apply(w, bits)


class QuantLinear(nn.Linear):
    """nn.Linear whose forward uses the k-bit value of its weight when `bits` is set (None: full precision)."""

    bits: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits is None:
            return super().forward(x)
        return F.linear(x, fake_quantize(self.weight, self.bits), self.bias)


def set_weight_bits(module: nn.Module, bits: int | None) -> None:
    """Quantize (or, with None, stop quantizing) every QuantLinear in `module`."""
    for m in module.modules():
        if isinstance(m, QuantLinear):
            m.bits = bits


def quantize_model(model: nn.Module, cfg: QuantizationConfig) -> None:
    """Switch quantization-aware training on for the scope's projections of every block of a Llama."""
    for block in model.layers:
        for part in QUANT_SCOPES[cfg.scope]:
            set_weight_bits(getattr(block, part), cfg.bits)


def quantized_state_dict(state: Mapping[str, torch.Tensor], cfg: QuantizationConfig) -> dict[str, torch.Tensor]:
    """A Llama state dict with the scope's weights replaced by their quantized values: what the quantized
    model computes with, as plain weights (an exported QAT model needs no quantization code)."""
    parts = "|".join(QUANT_SCOPES[cfg.scope])
    scoped = re.compile(rf"^layers\.\d+\.({parts})\.w\w+\.weight$")
    return {k: quantize(v, cfg.bits) if cfg.bits is not None and scoped.match(k) else v for k, v in state.items()}


@torch.no_grad()
def bake(module: nn.Module) -> None:
    """Write each quantized QuantLinear's quantized weight into the weight and switch quantization off."""
    for m in module.modules():
        if isinstance(m, QuantLinear) and m.bits is not None:
            m.weight.copy_(quantize(m.weight, m.bits))
            m.bits = None
