"""Adam moments in and out of a DeepSpeed engine, as full fp32 tensors per parameter name.

Used where a new engine must go on with an old optimizer's state: the norm-only switch (hybrid.py) and a run
started from a grown folder that carries mapped moments (`train.carry.optimizer`, storage/carry.py).
DeepSpeed creates a fresh engine's Adam state (over its flat fp32 partitions) only at the first step, and
ZeRO-1/2 link each parameter's fragment of it after that step; so the state is created (and linked) here, then
filled through DeepSpeed's per-parameter setters. Every function is collective: all ranks call it in order.
"""
from __future__ import annotations

import torch
from deepspeed.utils import safe_get_full_optimizer_state, safe_set_full_optimizer_state

MOMENTS = ("exp_avg", "exp_avg_sq")
Moments = dict[str, dict[str, torch.Tensor]]
"""Parameter name -> {"exp_avg": full fp32 tensor, "exp_avg_sq": ...}."""


def carry_moments(engine, names: set[str]) -> tuple[Moments, int] | None:
    """The Adam moments of the parameters `names` (full fp32, on CPU) and the optimizer's step count, to put into
    the next engine with `restore_moments`; None outside ZeRO-1/2 or before the first step. Collective."""
    if engine.zero_optimization_stage() not in (1, 2):
        return None
    steps = [state["step"] for state in engine.optimizer.optimizer.state.values() if "step" in state]
    if not steps:
        return None
    _link_optimizer_state(engine)
    moments = {n: {key: safe_get_full_optimizer_state(p, key).cpu().clone() for key in MOMENTS}
               for n, p in engine.module.named_parameters() if n in names}
    return moments, int(steps[0])


def restore_moments(engine, carried: tuple[Moments, int]) -> None:
    """Put carried moments and step count into an engine that has not stepped yet (ZeRO 1-3); parameters the
    carry has no moments for start at zero, as in a fresh optimizer. Collective."""
    moments, step = carried
    inner = engine.optimizer.optimizer
    if engine.zero_optimization_stage() == 3:
        flats = engine.optimizer.fp32_partitioned_groups_flat
    else:
        flats = [flat for group in inner.param_groups for flat in group["params"]]
    for flat in flats:  # this rank's flat fp32 partitions: create their state as the first step would
        inner.state[flat] = {"step": torch.tensor(float(step)), "exp_avg": torch.zeros_like(flat),
                             "exp_avg_sq": torch.zeros_like(flat)}
    if engine.zero_optimization_stage() in (1, 2):
        _link_optimizer_state(engine)
    for n, p in engine.module.named_parameters():
        for key, value in moments.get(n, {}).items():
            safe_set_full_optimizer_state(p, value.to(p.device), key)


def _link_optimizer_state(engine) -> None:
    """Point every parameter's optimizer-state fragment at the current Adam state tensors (DeepSpeed 0.19.8 does
    it only on some of its step paths, so `safe_*_full_optimizer_state` can find none)."""
    engine.optimizer._hp_optimizer_states_linked = False
    engine.optimizer._lazy_init_hp_params_optimizer_state()
