"""Growth operators by name: one decorator registers an operator, one lookup builds it from config.

Every operator is a pure function `(cfg, state, target, *, opt_state=None, **params) -> GrowthResult`.
The decorator validates what all operators share (target vs source, state and optimizer-state shapes) so an
operator's body holds only its own mapping.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Literal

from growth.operators.base import GrowthError, GrowthResult, OptState, StateDict
from growth.operators.checks import check_opt_state, check_state, check_target
from growth.operators.moments import map_moments
from model import ModelConfig
from model.mup import FINAL_NORM, fold_into_final_norm, readout_multiplier
from settings.registry import Registry

Kind = Literal["depth", "width"]

GrowthOperator = Callable[..., GrowthResult]


@dataclass(frozen=True)
class _Entry:
    fn: GrowthOperator
    kind: Kind


OPERATORS: Registry[_Entry] = Registry("growth operator", GrowthError)


def register_operator(name: str, kind: Kind) -> Callable[[GrowthOperator], GrowthOperator]:
    """Register `fn` under `name`; the wrapper checks the inputs and stamps the record with name and kind."""
    if kind not in ("depth", "width"):
        raise GrowthError(f"operator kind must be 'depth' or 'width', got {kind!r}")

    def decorate(fn: GrowthOperator) -> GrowthOperator:
        if name in OPERATORS:
            raise ValueError(f"growth operator {name!r} is already registered by {OPERATORS[name].fn.__qualname__}")

        @functools.wraps(fn)
        def checked(cfg: ModelConfig, state: StateDict, target: ModelConfig, *,
                    opt_state: OptState | None = None, **params: Any) -> GrowthResult:
            check_target(cfg, target, kind, name)
            check_state(cfg, state, "state")
            if opt_state is not None:
                check_opt_state(state, opt_state, "opt_state")
            result = fn(cfg, state, target, opt_state=opt_state, **params)
            result.record = {"operator": name, "kind": kind, **result.record}
            _keep_mup(cfg, result)
            return result

        OPERATORS.add(name, _Entry(checked, kind))
        return checked

    return decorate


def _keep_mup(cfg: ModelConfig, result: GrowthResult) -> None:
    """Keep a µP model's function across a change of width: its logits carry base_width / dim (model/mup.py), so
    an operator that preserves the head's input-output map leaves the logits scaled by dim / dim'. That factor
    goes into the final norm's gain (tied heads too); the gain's gradient scales by its inverse, and so do its
    moments (moments.py's rule). The grown config keeps the source's model.mup (check_target), so the grown model
    is the µP model of its width: its hidden lrs and logits follow the new dim."""
    factor = readout_multiplier(cfg) / readout_multiplier(result.config)
    if factor == 1.0:
        return
    result.state_dict = fold_into_final_norm(result.state_dict, factor)
    if result.opt_state is not None and FINAL_NORM in result.opt_state:
        result.opt_state[FINAL_NORM] = map_moments([result.opt_state[FINAL_NORM]], lambda t: t, 1.0 / factor)
    result.record["mup_final_norm_factor"] = factor


def get_operator(name: str) -> GrowthOperator:
    """The registered operator `name` (with input checks applied)."""
    return OPERATORS[name].fn


def available_operators(kind: Kind | None = None) -> list[str]:
    """Registered operator names, sorted; only those of `kind` when given (e.g. a LAG pool of depth operators)."""
    return sorted(n for n, e in OPERATORS.items() if kind is None or e.kind == kind)
