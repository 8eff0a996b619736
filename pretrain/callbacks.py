"""The hook API: monitors and periodic jobs plug in here without editing the training loop.

Hooks run on every rank (under ZeRO-3 every rank must run the same forward passes); a callback that only
writes files does so on rank 0 (`trainer.is_main`). `on_step_end` may add keys to `record`, which is logged
to metrics.jsonl / TensorBoard whenever any key beyond step and tokens is present. A callback that holds
state across steps returns it from `state_dict`; it is saved in every checkpoint and handed back to
`load_state_dict` when a run resumes from that checkpoint (as OLMo-core's callbacks do).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from pretrain import dist
from pretrain.probes import JOBS, MONITORS
from pretrain.probes.registry import build_plugins

log = logging.getLogger("growlm")

if TYPE_CHECKING:
    from pretrain.config import Config
    from pretrain.trainer import Trainer


class Callback:
    """Base class: override the hooks you need."""

    def on_train_start(self, trainer: "Trainer") -> None: ...

    def on_step_end(self, trainer: "Trainer", record: dict[str, Any]) -> None: ...

    def on_checkpoint_saved(self, trainer: "Trainer", path: Path) -> None: ...

    def on_train_end(self, trainer: "Trainer", record: dict[str, Any]) -> None: ...

    def on_train_abort(self, trainer: "Trainer", error: BaseException) -> None:
        """Training is dying of `error` (it is re-raised after every callback had its say): say what is
        left behind; collectives may no longer work here."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue exactly (tensors, numbers, lists, dicts); {}: nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned at the checkpoint the run resumes from."""

    @property
    def state_key(self) -> str:
        """Where the checkpoint keeps this callback's state."""
        return f"{type(self).__module__}.{type(self).__qualname__}"


class CallbackStates:
    """The callbacks' states as one checkpoint part (pretrain/rundir.py's Stateful): each callback's own under its
    `state_key`; a callback with nothing to keep keeps nothing."""

    def __init__(self, callbacks: Sequence[Callback]):
        self.callbacks = callbacks

    def state_dict(self) -> dict[str, Any]:
        return {cb.state_key: state for cb in self.callbacks if (state := cb.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for cb in self.callbacks:
            if cb.state_key in state:
                cb.load_state_dict(state[cb.state_key])


def abort(callbacks: Sequence[Callback], trainer: "Trainer", error: BaseException) -> None:
    """Every callback's on_train_abort, each guarded: the original error is the one to report."""
    for cb in callbacks:
        try:
            cb.on_train_abort(trainer, error)
        except Exception:
            log.exception("callback %s failed while training was aborting", type(cb).__name__)


def due(step: int, every: int, last_step: int) -> bool:
    """A periodic job runs every `every` steps and once at the very end (every == 0: never)."""
    return every > 0 and (step % every == 0 or step == last_step)


class Validation(Callback):
    """Held-out loss on a fixed set of validation windows, the same at every evaluation: every `every` steps
    and at the steps `at`."""

    def __init__(self, every: int, batches: int, at: Sequence[int] = ()):
        self.every, self.batches, self.at = every, batches, frozenset(at)

    def on_step_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        if due(trainer.step, self.every, trainer.cfg.train.steps) or trainer.step in self.at:
            record["val/loss"] = self.evaluate(trainer)

    def evaluate(self, trainer: "Trainer") -> float:
        windows = trainer.data.val
        micro, world, r = trainer.cfg.train.micro_batch_size, dist.world_size(), dist.rank()
        losses = []
        trainer.engine.eval()
        with torch.no_grad():
            for b in range(self.batches):
                start = (b * world + r) * micro
                idx = torch.arange(start, start + micro) % len(windows)
                losses.append(trainer.lm_loss(trainer.batch(idx.numpy(), windows)))
        trainer.engine.train()
        return dist.all_reduce_mean(torch.stack(losses).mean()).item()


def build_callbacks(cfg: "Config", extra: Sequence[Callback] = ()) -> list[Callback]:
    """The run's callbacks in the order their hooks run: validation, the enabled monitors, the enabled jobs
    (each in registration order), then `extra` (the caller's own)."""
    validates = cfg.eval.every > 0 or cfg.eval.at
    callbacks: list[Callback] = [Validation(cfg.eval.every, cfg.eval.batches, cfg.eval.at)] if validates else []
    return callbacks + build_plugins((MONITORS, cfg.monitors), (JOBS, cfg.jobs)) + list(extra)
