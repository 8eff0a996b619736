"""Input checks every operator shares, so a bad request fails before any tensor is built, naming the field."""
from __future__ import annotations

from dataclasses import fields

import torch

from growth.operators.base import GrowthError, OptState, StateDict
from model import Llama, ModelConfig

GROWN_FIELDS = {"depth": ("n_layers",), "width": ("dim", "n_heads", "n_kv_heads", "ffn_dim")}
"""The config fields each kind of operator may grow; every other field must match the source."""


def check_target(cfg: ModelConfig, target: ModelConfig, kind: str, operator: str) -> None:
    """Target at least the source in the grown fields, equal elsewhere; width keeps head_dim (RoPE is per head)."""
    grown = GROWN_FIELDS[kind]
    for f in fields(ModelConfig):
        src, tgt = getattr(cfg, f.name), getattr(target, f.name)
        if f.name in grown and tgt < src:
            raise GrowthError(f"target model.{f.name}={tgt} is smaller than the source's {src}; "
                              f"{kind} operator {operator!r} only grows")
        if f.name not in grown and tgt != src:
            raise GrowthError(f"{kind} operator {operator!r} keeps model.{f.name}: source {src!r}, target {tgt!r} "
                              f"(it may grow only {', '.join(grown)})")
    if kind == "width" and target.head_width != cfg.head_width:
        raise GrowthError(
            f"width growth keeps head_dim (RoPE frequencies are per head_dim): source head_dim={cfg.head_width}, "
            f"target model.dim/model.n_heads={target.dim}/{target.n_heads}={target.head_width}; "
            f"grow n_heads with dim (n_heads={target.dim // cfg.head_width} for dim={target.dim})"
        )


def expected_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    """Parameter shapes of `Llama(cfg)`, read from the model itself on the meta device (no memory, no copy of
    its layout here)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in Llama(cfg).state_dict().items()}


def check_state(cfg: ModelConfig, state: StateDict, label: str) -> None:
    """`state` has exactly the keys and shapes of `Llama(cfg)` (consolidated: full tensors on every key)."""
    shapes = expected_shapes(cfg)
    missing, unexpected = sorted(shapes.keys() - state.keys()), sorted(state.keys() - shapes.keys())
    if missing or unexpected:
        raise GrowthError(f"{label} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, shape in shapes.items():
        if state[key].shape != shape:
            raise GrowthError(f"{label}[{key!r}] has shape {tuple(state[key].shape)}, its config implies "
                              f"{tuple(shape)}")


def check_opt_state(state: StateDict, opt_state: OptState, label: str) -> None:
    """Every optimizer entry belongs to a parameter and is either shaped like it or a scalar (e.g. `step`)."""
    for name, entries in opt_state.items():
        if name not in state:
            raise GrowthError(f"{label} has an entry for {name!r}, which is not a parameter of the model")
        for key, value in entries.items():
            if value.dim() != 0 and value.shape != state[name].shape:
                raise GrowthError(f"{label}[{name!r}][{key!r}] has shape {tuple(value.shape)}; optimizer tensors "
                                  f"must be scalars or shaped like the parameter {tuple(state[name].shape)}")
