"""What every regularizer sees (`LossInputs`) and owes the trainer (`Regularizer`): a penalty and its schedule."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from settings.errors import UserError
from settings.fields import check_fields, non_negative


class RegularizerConfigError(UserError, ValueError):
    """A `regularizers:` entry that cannot be built; the message names the key and what would be valid."""


class InvalidParam(RegularizerConfigError):
    """A parameter value a regularizer rejects; the builder prefixes `regularizers[i].` to `param`."""

    def __init__(self, param: str, reason: str):
        super().__init__(f"{param}: {reason}")
        self.param = param
        self.reason = reason


@dataclass(kw_only=True)
class LossInputs:
    """One micro-batch's forward results, handed to every regularizer (keyword-only: the fields will grow)."""

    tokens: Tensor
    """[B, T] input token ids."""
    targets: Tensor
    """[B, T] next-token ids."""
    logits: Optional[Tensor] = None
    """[B, T, V] LM-head outputs; None when the head is fused with the loss (`train.loss_chunk` > 0)."""
    log_z: Optional[Tensor] = None
    """[B, T] fp32 logsumexp of the logits per token, when the head is fused with the loss."""
    step: int
    """Optimizer step, 0-based: drives each regularizer's start/warm-up schedule."""
    mask: Optional[Tensor] = None
    """[B, T] bool, True = real token; None = every token is real."""
    hidden_states: Optional[list[Tensor]] = None
    """h_0..h_L residual streams (before the final norm); set when any regularizer needs them."""
    final_normed: Optional[Tensor] = None
    """norm(h_L), the LM head's input; set together with hidden_states."""


@dataclass(kw_only=True)
class Regularizer(ABC):
    """A loss term added to cross-entropy, built by name from config.

    Subclasses declare their parameters as typed fields (the class is a keyword-only dataclass; `@register`
    makes it one), so the registry validates config keys and types from the fields alone. They implement
    `penalty` and may override `validate` for checks across fields.
    """

    name: ClassVar[str] = ""
    param_types: ClassVar[dict[str, Any]] = {}
    """Parameter -> annotation, set by @register (what a config entry may set)."""
    """Registered name; the trainer logs `reg/<name>` and `reg/<name>/<metric>`."""
    needs_hidden_states: ClassVar[bool] = False
    """True if `penalty` reads `hidden_states`/`final_normed`; the trainer then asks the model for them."""
    needs_logits: ClassVar[bool] = True
    """True if `penalty` reads the full `logits`, which a fused, chunked loss head never materializes (so such
    a regularizer is refused with `train.loss_chunk` > 0). Set False when log_z or hidden states suffice."""
    needs_log_z_grad: ClassVar[bool] = False
    """True if `penalty` differentiates through `log_z` (z-loss): the fused loss head then keeps log Z in the
    graph, at one extra head matmul in backward."""

    weight: float = non_negative(1.0)
    """Target coefficient lambda of the penalty."""
    start_step: int = non_negative(0)
    """The weight is 0 before this optimizer step (the penalty is not even computed)."""
    warmup_steps: int = non_negative(0)
    """Steps over which the weight ramps linearly from weight/warmup_steps to weight; 0 = no ramp."""

    def __post_init__(self) -> None:
        try:
            check_fields(self)  # each parameter's declared rule (settings/fields.py), subclasses' too
        except ValueError as err:
            raise RegularizerConfigError(str(err)) from None
        self.validate()

    def validate(self) -> None:
        """Checks across parameters that types alone cannot express; raise `InvalidParam`."""

    def weight_at(self, step: int) -> float:
        """Effective coefficient at optimizer step `step`.

        The first active step (start_step) already gets weight/warmup_steps, so no step computes a penalty
        only to multiply it by zero; full weight is reached at start_step + warmup_steps - 1.
        """
        if step < self.start_step:
            return 0.0
        if self.warmup_steps == 0:
            return self.weight
        return self.weight * min(1.0, (step - self.start_step + 1) / self.warmup_steps)

    @abstractmethod
    def penalty(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        """Unweighted scalar penalty (differentiable) and metrics to log."""

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float | Tensor]]:
        """Weighted penalty and detached metrics (incl. the effective `weight`).

        While the weight is 0 the penalty is skipped and a constant zero returned: every rank sees the same
        step, so all ranks skip together and collective ops inside the optimizer stay in lockstep.
        """
        w = self.weight_at(inputs.step)
        if w == 0.0:
            return torch.zeros((), device=inputs.tokens.device), {"weight": 0.0}
        value, metrics = self.penalty(inputs)
        return w * value, {"weight": w, **{k: v.detach() for k, v in metrics.items()}}
