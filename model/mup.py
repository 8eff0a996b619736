"""µP for Adam (Tensor Programs V, Yang et al. 2022, Table 3 in its readout-multiplier form): which parameters
scale with width, and by how much, as pure functions of the model config and a parameter name.

With width multiplier m = dim / base_width:
- hidden weights (every block projection: both of its dimensions grow with width): init std x 1/sqrt(m),
  Adam lr x 1/m, so each update moves a pre-activation by O(1) at any width;
- vector-like weights (the embedding, the LM head's weight, the norm gains): init and lr as at base width;
- the logits x 1/m (the readout multiplier; the head scales its input, which is the same and cheaper).
At dim == base_width every factor is 1, so the µP model there is the standard one and an lr tuned on it carries
to other widths. Width grows as the growth operators grow it: dim, heads and ffn_dim together at a fixed
head_dim, so one multiplier from dim serves every matrix, and attention keeps its 1/sqrt(head_dim) scale (µP's
1/head_dim is for a head_dim that grows). The lr factors reach the optimizer through its parameter groups
(pretrain/optim.py); the readout multiplier folds into the final norm's gain for export and growth.
"""
from __future__ import annotations

import math
from typing import Mapping, TypeVar

from model.config import ModelConfig

T = TypeVar("T")

FINAL_NORM = "norm.weight"
"""The gain in front of the LM head: the one place the readout multiplier folds into, tied head or not."""


def width_multiplier(cfg: ModelConfig) -> float:
    """m = dim / base_width under µP; 1 without it."""
    return cfg.dim / cfg.mup.base_width if cfg.mup is not None else 1.0


def is_hidden(name: str) -> bool:
    """A block projection (wq, wk, wv, wo, w1, w2, w3): its fan-in and fan-out both grow with width."""
    return name.startswith("layers.") and not name.endswith("norm.weight")


def lr_scale(cfg: ModelConfig, name: str) -> float:
    """Factor on the Adam lr of parameter `name`: 1/m for hidden weights, 1 for vector-like ones."""
    return 1.0 / width_multiplier(cfg) if is_hidden(name) else 1.0


def init_scale(cfg: ModelConfig, name: str) -> float:
    """Factor on the init std of parameter `name`: 1/sqrt(m) for hidden weights (variance 1/fan_in), else 1."""
    return 1.0 / math.sqrt(width_multiplier(cfg)) if is_hidden(name) else 1.0


def readout_multiplier(cfg: ModelConfig) -> float:
    """Factor on the logits: 1/m under µP, 1 without it."""
    return 1.0 / width_multiplier(cfg)


def fold_into_final_norm(state: Mapping[str, T], factor: float) -> dict[str, T]:
    """`state` with the final norm's gain times `factor`: the logits scale by `factor` (the gain feeds only the
    head), tied embeddings or not. A new dict; every other tensor is shared."""
    out = dict(state)
    if factor != 1.0:
        out[FINAL_NORM] = (state[FINAL_NORM].float() * factor).to(state[FINAL_NORM].dtype)
    return out
