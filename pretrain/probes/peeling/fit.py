"""Fit one block so that B'(X_input) ~ X_target (mean squared error over the calibration tokens).

Two solvers (our reconstruction of the paper's "lightweight layer-specific reference solutions"):
- adam: every parameter of the block, full batch, a bounded number of steps; the best iterate is kept, so a
  fit never ends worse than its init (a block already at a local optimum stays there).
- lstsq: the block's output is x + wo·a + w2·f, linear in the output projections (wo, w2) once their inputs
  a (attention heads) and f (SwiGLU hidden) are fixed. Solve that ridge least-squares problem in closed form,
  recompute f (it depends on wo through the residual), and repeat `lstsq_rounds` times, keeping the best.
Low-bit variants quantize every Linear weight with a straight-through estimator (model/quant.py); with lstsq the
solve sees quantized upstream weights and its solution is then quantized (no gradient steps).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.llama import Block, Llama
from model.quant import bake, set_weight_bits
from pretrain.probes.peeling.settings import PeelingSettings

_RIDGE = 1e-6
"""Ridge strength relative to the mean diagonal of the Gram matrix: only there to keep the solve well posed."""

Rope = tuple[torch.Tensor, torch.Tensor]


@dataclass
class FitResult:
    block: Block
    """The fitted block (quantized weights baked in), in eval mode, without gradients."""
    mse: float
    """MSE of the fitted block on (x, y)."""
    init_mse: float
    """MSE of the (quantized) initial block: the fit's starting point."""


def fresh_block(cfg: ModelConfig, seed: int) -> Block:
    """A newly initialized block: the model's init rule for a 1-layer model (so wo, w2 at init_std / sqrt(2))."""
    torch.manual_seed(seed)
    return Llama(dataclasses.replace(cfg, n_layers=1, vocab_size=1)).layers[0]


@torch.no_grad()
def block_mse(block: nn.Module, x: torch.Tensor, y: torch.Tensor, rope: Rope) -> float:
    return F.mse_loss(block(x, *rope), y).item()


def fit_block(init: Block, x: torch.Tensor, y: torch.Tensor, rope: Rope, bits: int | None,
              settings: PeelingSettings) -> FitResult:
    """Fit a copy of `init` (never modified) to map x -> y, in the variant with `bits` (None = fp)."""
    block = copy.deepcopy(init)
    set_weight_bits(block, bits)
    block.requires_grad_(True)
    init_mse = block_mse(block, x, y, rope)
    if settings.solver == "adam":
        _fit_adam(block, x, y, rope, settings.steps, settings.lr)
    else:
        _fit_lstsq(block, x, y, rope, settings.lstsq_rounds)
    bake(block)
    block.requires_grad_(False).eval()
    return FitResult(block, block_mse(block, x, y, rope), init_mse)


def _snapshot(block: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in block.state_dict().items()}


def _fit_adam(block: Block, x: torch.Tensor, y: torch.Tensor, rope: Rope, steps: int, lr: float) -> None:
    opt = torch.optim.Adam(block.parameters(), lr=lr)
    best, best_state = math.inf, None
    for step in range(steps + 1):  # the last pass only scores the final update
        loss = F.mse_loss(block(x, *rope), y)
        if loss.item() < best:
            best, best_state = loss.item(), _snapshot(block)
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    block.load_state_dict(best_state)


def _projection_inputs(block: Block, x: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs of wo and w2 under the block's current weights, captured by hooks (no model code copied)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [module.register_forward_pre_hook(lambda m, args, key=key: seen.__setitem__(key, args[0]))
             for key, module in (("a", block.attention.wo), ("f", block.feed_forward.w2))]
    try:
        block(x, *rope)
    finally:
        for h in hooks:
            h.remove()
    return seen["a"], seen["f"]


@torch.no_grad()
def _fit_lstsq(block: Block, x: torch.Tensor, y: torch.Tensor, rope: Rope, rounds: int) -> None:
    wo, w2 = block.attention.wo.weight, block.feed_forward.w2.weight  # the latent weights when quantized
    best, best_state = block_mse(block, x, y, rope), _snapshot(block)
    residual = (y - x).flatten(0, -2).double()
    for _ in range(rounds):
        a, f = _projection_inputs(block, x, rope)
        feats = torch.cat([a, f], dim=-1).flatten(0, -2).double()
        gram = feats.T @ feats
        gram.diagonal().add_(_RIDGE * gram.diagonal().mean().clamp_min(1e-12))
        solution = torch.linalg.solve(gram, feats.T @ residual)  # [a_dim + ffn_dim, dim]
        wo.copy_(solution[: a.shape[-1]].T)
        w2.copy_(solution[a.shape[-1]:].T)
        mse = block_mse(block, x, y, rope)
        if mse < best:
            best, best_state = mse, _snapshot(block)
    block.load_state_dict(best_state)
