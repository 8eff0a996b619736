"""growlm: growth -- operators that grow a trained model's state dict into a larger model (LAG and gradual stacking orchestrate it from above: experiments/lag_choice.py, experiments/stacking_run.py)."""
from __future__ import annotations

from typing import Any

from growth.operators import GrowthError, GrowthResult, available_operators, get_operator
from growth.operators.base import StateDict
from model import ModelConfig

__all__ = ["GrowthError", "GrowthResult", "available_operators", "get_operator", "grow"]


def grow(cfg: ModelConfig, state: StateDict, op_name: str, target: ModelConfig, **params: Any) -> GrowthResult:
    """Grow `state` (a consolidated state dict of `Llama(cfg)`) into `target` with the operator `op_name`;
    `params` go to the operator (e.g. opt_state=..., seed=..., other_state=...)."""
    return get_operator(op_name)(cfg, state, target, **params)
