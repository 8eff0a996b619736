"""Depth growth: a layer map (big layer i <- small layer j, or a fresh block) and the operators that choose it.

All depth operators share `_grow_layers`; each operator only says which source layer each target layer copies.
Embeddings, final norm and head are copied unchanged. Moments of copied layers are copied (moments.py);
fresh blocks start at zero moments.
"""
from __future__ import annotations

import re
from dataclasses import replace

import torch

from growth.operators.base import GrowthError, GrowthResult, OptState, StateDict
from growth.operators.moments import fresh_moments, map_moments
from growth.operators.registry import register_operator
from model import Llama, ModelConfig

_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(.+)$")
ZERO_OUTPUTS = ("attention.wo.weight", "feed_forward.w2.weight")
"""The residual-branch output projections: zero them and a block is the identity on the residual stream."""

LayerMap = list[int | None]
"""Target layer i <- source layer layer_map[i]; None marks a fresh block (zero_block)."""


@register_operator("stack", kind="depth")
def stack(cfg: ModelConfig, state: StateDict, target: ModelConfig, *,
          opt_state: OptState | None = None) -> GrowthResult:
    """G_stack (Du et al. 2024, arXiv 2405.15319): target layer i copies source layer i mod L. Not
    function-preserving -- the control LAG shows can still be the better choice after a short lag."""
    return _grow_layers(cfg, state, target, [i % cfg.n_layers for i in range(target.n_layers)], opt_state, {})


@register_operator("stack_top", kind="depth")
def stack_top(cfg: ModelConfig, state: StateDict, target: ModelConfig, *,
              opt_state: OptState | None = None) -> GrowthResult:
    """Gradual stacking (Reddi et al. 2023): keep all L layers and copy the top k = L_big - L of them, in order,
    on top. k may not exceed L (use `stack` to more than double)."""
    n, k = cfg.n_layers, target.n_layers - cfg.n_layers
    if k > n:
        raise GrowthError(f"stack_top copies the top k = target n_layers - source n_layers = {k} layers, "
                          f"but the source has only model.n_layers={n}; use 'stack' to more than double")
    return _grow_layers(cfg, state, target, list(range(n)) + list(range(n - k, n)), opt_state, {})


@register_operator("stack_middle", kind="depth")
def stack_middle(cfg: ModelConfig, state: StateDict, target: ModelConfig, *,
                 opt_state: OptState | None = None, block: int | None = None) -> GrowthResult:
    """MIDAS (Saunshi et al., NeurIPS 2024): duplicate a block of `block` middle layers.

    Placement: the block is source layers [s, s + block) with s = (L - block) // 2 (the lower middle when
    L - block is odd); its copies, (L_big - L) / block of them, go right after it, so the middle block repeats
    and the bottom and top layers keep their places. `block` defaults to L_big - L (capped at L)."""
    n, k = cfg.n_layers, target.n_layers - cfg.n_layers
    block = min(k, n) if block is None else block
    if k and not (isinstance(block, int) and 1 <= block <= n and k % block == 0):
        raise GrowthError(f"stack_middle block={block!r} must be an integer in [1, source n_layers={n}] and divide the "
                          f"number of new layers {k}")
    start = (n - block) // 2
    middle = list(range(start, start + block)) * (k // block if k else 0)
    layer_map = list(range(start + block)) + middle + list(range(start + block, n))
    return _grow_layers(cfg, state, target, layer_map, opt_state, {"block": block, "block_start": start})


@register_operator("interleave", kind="depth")
def interleave(cfg: ModelConfig, state: StateDict, target: ModelConfig, *,
               opt_state: OptState | None = None) -> GrowthResult:
    """LiGO's "interlace" depth expansion (Wang et al. 2023): target layer i copies source layer i // r with
    r = L_big / L, so each layer is followed by its own copies."""
    if target.n_layers % cfg.n_layers:
        raise GrowthError(f"interleave needs target model.n_layers={target.n_layers} to be a multiple of the "
                          f"source's {cfg.n_layers}")
    r = target.n_layers // cfg.n_layers
    return _grow_layers(cfg, state, target, [i // r for i in range(target.n_layers)], opt_state, {"ratio": r})


@register_operator("zero_block", kind="depth")
def zero_block(cfg: ModelConfig, state: StateDict, target: ModelConfig, *,
               opt_state: OptState | None = None, position: str = "top", seed: int = 0) -> GrowthResult:
    """New blocks whose output projections (wo, w2) are zero, so the grown model computes exactly the source's
    function -- the function-preserving control LAG argues one should not pick by its step-0 loss.

    The blocks' other weights get the model's own init (`Llama.reset_parameters`, seeded by `seed`) so they
    can learn: with wo = w2 = 0 their gradients are nonzero from the first step. `position`: "top" (after
    all source layers) or "interleave" (spread evenly: floor((l+1)k/L) - floor(lk/L) new blocks after source
    layer l, so no divisibility is needed)."""
    n, k = cfg.n_layers, target.n_layers - cfg.n_layers
    if position == "top":
        layer_map: LayerMap = list(range(n)) + [None] * k
    elif position == "interleave":
        layer_map = [x for l in range(n) for x in [l] + [None] * ((l + 1) * k // n - l * k // n)]
    else:
        raise GrowthError(f"zero_block position={position!r}; valid: 'top', 'interleave'")
    return _grow_layers(cfg, state, target, layer_map, opt_state,
                        {"position": position, "seed": seed}, fresh=_fresh_blocks(target, k, seed))


def _fresh_blocks(target: ModelConfig, count: int, seed: int) -> list[StateDict]:
    """`count` blocks with the model's init and zero output projections; the global RNG is left untouched."""
    if count == 0:
        return []
    # vocab_size=1: only the blocks are wanted; the residual init scale (which depends on n_layers) is moot
    # because wo and w2 are zeroed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Llama(replace(target, n_layers=count, vocab_size=1))
    blocks = [{k: v.detach().clone() for k, v in layer.state_dict().items()} for layer in model.layers]
    for block in blocks:
        for key in ZERO_OUTPUTS:
            block[key].zero_()
    return blocks


def _grow_layers(cfg: ModelConfig, state: StateDict, target: ModelConfig, layer_map: LayerMap,
                 opt_state: OptState | None, params: dict, fresh: list[StateDict] | None = None) -> GrowthResult:
    """Build the target state from `layer_map`: shared by every depth operator."""
    if len(layer_map) != target.n_layers:  # an operator's bug, not a user's: say so loudly
        raise AssertionError(f"layer map has {len(layer_map)} entries for {target.n_layers} layers")
    new_state: StateDict = {}
    new_opt: OptState | None = None if opt_state is None else {}

    def put(key: str, value: torch.Tensor, moments: dict | None) -> None:
        new_state[key] = value
        if new_opt is not None and moments is not None:
            new_opt[key] = moments

    per_layer: dict[str, list[str]] = {}
    for key in state:
        match = _LAYER_KEY.match(key)
        if match:
            per_layer.setdefault(match.group(2), []).append(key)
        else:
            put(key, state[key].clone(), _copied(opt_state, key))
    fresh_iter = iter(fresh or [])
    for i, src in enumerate(layer_map):
        block = next(fresh_iter) if src is None else None
        for suffix in per_layer:
            if block is not None:
                template = None if opt_state is None else opt_state.get(f"layers.0.{suffix}")
                put(f"layers.{i}.{suffix}", block[suffix], None if template is None else fresh_moments(template))
            else:
                put(f"layers.{i}.{suffix}", state[f"layers.{src}.{suffix}"].clone(),
                    _copied(opt_state, f"layers.{src}.{suffix}"))
    if target.tie_embeddings:
        new_state["output.weight"] = new_state["tok_embeddings.weight"]
    # Exact iff the source layers survive once each, in order, and everything added is a zero-output block.
    preserving = [s for s in layer_map if s is not None] == list(range(cfg.n_layers))
    record = {"layer_map": layer_map, "function_preserving": preserving, "params": params}
    return GrowthResult(target, new_state, new_opt, record)


def _copied(opt_state: OptState | None, key: str) -> dict | None:
    return None if opt_state is None or key not in opt_state else map_moments([opt_state[key]], torch.clone)
