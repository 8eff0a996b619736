"""Helpers for the growth tests: tiny random fp32 Llamas (weights at O(1) activation scale, so every block
matters), logits, gradients, and the shared grow cases. A uniquely named module rather than conftest, which
every test folder may have (the suite's root conftest is imported by name as `conftest`, so a second one here
would shadow it). Test modules import the `tokens` fixture from here."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from model import Llama, ModelConfig

TINY = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, vocab_size=64, max_seq_len=16)
TOL = 1e-5
"""Largest |logit difference| accepted as "function preserved" (fp32, logits of O(1))."""


def tiny(**overrides) -> ModelConfig:
    return replace(TINY, **overrides)


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (3, TINY.max_seq_len), generator=torch.Generator().manual_seed(1))


def random_model(cfg: ModelConfig, seed: int = 0) -> Llama:
    """A Llama whose weights look trained in scale: std 1/sqrt(fan_in), embeddings N(0, 1), gains 1 +- 0.1."""
    gen = torch.Generator().manual_seed(seed)
    model = Llama(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name == "tok_embeddings.weight" and not cfg.tie_embeddings:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    return model


def state_of(model: Llama) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def load(result) -> Llama:
    """The grown model, loaded strictly (every key present, every shape right)."""
    model = Llama(result.config)
    model.load_state_dict(result.state_dict, strict=True)
    return model


def logits(model: Llama, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


def max_diff(a: Llama, b: Llama, tokens: torch.Tensor) -> float:
    return (logits(a, tokens) - logits(b, tokens)).abs().max().item()


def grads_as_moments(model: Llama, tokens: torch.Tensor) -> tuple[dict, dict]:
    """(grads, opt_state) where opt_state holds the model's own gradient as exp_avg (its square as exp_avg_sq)
    on one LM batch: the grown model's gradient is then what the moment rule must reproduce."""
    model.zero_grad()
    out = model(tokens[:, :-1]).logits
    torch.nn.functional.cross_entropy(out.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt = {n: {"exp_avg": g, "exp_avg_sq": g * g, "step": torch.tensor(7.0)} for n, g in grads.items()}
    return grads, opt


NET2NET = {  # case: (source overrides, target overrides)
    "gqa_heads_and_groups_x2": ({}, dict(dim=64, n_heads=8, n_kv_heads=4, ffn_dim=96)),
    "gqa_groups_widen_kv_kept": ({}, dict(dim=64, n_heads=8, n_kv_heads=2, ffn_dim=80)),
    "ffn_only_uneven_copies": ({}, dict(ffn_dim=80)),
    "x3_mha": (dict(n_kv_heads=4), dict(dim=96, n_heads=12, n_kv_heads=12, ffn_dim=48)),
}


def fused(cfg: ModelConfig) -> ModelConfig:
    """The config fusion builds from cfg: every width field doubled."""
    return replace(cfg, dim=2 * cfg.dim, n_heads=2 * cfg.n_heads, n_kv_heads=2 * cfg.n_kv_heads,
                   ffn_dim=2 * cfg.ffn_dim)
