"""Faults a long run meets: preemption signals and non-finite steps.

Preemption: SIGTERM / SIGUSR1 set a flag; after the current step every rank agrees (a MAX all-reduce over a
CPU gloo group, so no GPU sync) to save a checkpoint and exit 0, which lets a scheduler requeue the job.
Non-finite steps: DeepSpeed is configured to skip an update whose gradient norm is inf/NaN (`overflow`);
the trainer then applies the policy of `train.on_nonfinite`.
"""
from __future__ import annotations

import logging
import signal
from typing import Any

import torch
import torch.distributed as tdist

log = logging.getLogger("growlm")

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class NonFiniteError(RuntimeError):
    """Raised by the `stop` policy with a diagnostic of the step."""


class Preemption:
    """Signal flag shared by all ranks at step boundaries."""

    def __init__(self) -> None:
        self._flag = False
        for sig in PREEMPT_SIGNALS:
            signal.signal(sig, self._handle)
        self._group = tdist.new_group(backend="gloo") if tdist.is_initialized() else None

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("received %s: finishing this step, saving, then exiting", signal.Signals(signum).name)
        self._flag = True

    def requested(self) -> bool:
        """Whether any rank was signalled (collective: every rank calls it after every step)."""
        if self._group is None:
            return self._flag
        flag = torch.tensor([int(self._flag)])
        tdist.all_reduce(flag, op=tdist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())


def diagnose(step: int, metrics: dict[str, torch.Tensor], module: torch.nn.Module) -> str:
    """Which loss terms and which parameters are non-finite at this step (parameters are full on ZeRO 1/2;
    under ZeRO-3 only this rank's shard is checked)."""
    terms = {k: float(v) for k, v in metrics.items() if not torch.isfinite(v).all()}
    bad_params = [n for n, p in module.named_parameters() if p.numel() and not torch.isfinite(p).all()]
    return (f"step {step}: non-finite gradient norm (the update was skipped); non-finite loss terms: "
            f"{terms or 'none'}; parameters with non-finite values: {bad_params or 'none (weights are intact)'}")
