"""Faults a long run meets: preemption signals and non-finite steps.

Preemption: SIGTERM / SIGUSR1 set a flag; after the current step every rank agrees (a MAX all-reduce over a
CPU gloo group, so no GPU sync) to save a checkpoint and exit 0, which lets a scheduler requeue the job. The
death of the `python -m launch` process that started the ranks (SIGKILL, the OOM killer) sets it too: the
ranks run in a session of their own, so nothing else would stop them.
Non-finite steps: DeepSpeed is configured to skip an update whose gradient norm is inf/NaN (`overflow`);
`NonFinitePolicy` applies `train.on_nonfinite` to it and keeps what it learned in `<run>/faults.json`.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from launch.command import LAUNCH_OWNER_ENV
from pretrain.config import ConfigError
from storage import run_files
from storage.folders import latest
from storage.io import atomic_write_json

log = logging.getLogger("growlm")

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
LAUNCH_POLL_S = 1.0
FAULT_STATE = run_files.FAULTS
MAX_ROLLBACKS = 3
"""Rollbacks to one checkpoint before `on_nonfinite: rollback` gives up (a diverging run would loop forever)."""
Window = tuple[int, int]


class NonFiniteError(RuntimeError):
    """Raised by the `stop` policy with a diagnostic of the step."""


class Preemption:
    """Signal flag shared by all ranks at step boundaries."""

    def __init__(self) -> None:
        self._flag = False
        for sig in PREEMPT_SIGNALS:
            signal.signal(sig, self._handle)
        self._group = tdist.new_group(backend="gloo") if tdist.is_initialized() else None
        self._watch_launch()

    def _watch_launch(self) -> None:
        """A daemon thread that sets the flag once the `python -m launch` process of this host is gone (a
        zombie counts as gone; psutil tells a reused pid apart by its start time)."""
        owner = os.environ.get(LAUNCH_OWNER_ENV, "")
        host, _, pid = owner.rpartition(":")
        if not pid.isdigit() or host != socket.gethostname():  # not started by it, or on another node
            return
        import psutil

        try:
            launch = psutil.Process(int(pid))
        except psutil.NoSuchProcess:
            launch = None

        def alive() -> bool:
            try:
                return launch is not None and launch.is_running() and launch.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        def watch() -> None:
            while alive():
                time.sleep(LAUNCH_POLL_S)
            log.warning("the launch process (pid %s) is gone: finishing this step, saving, then exiting", pid)
            self._flag = True

        threading.Thread(target=watch, name="growlm-launch-watch", daemon=True).start()

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


class NonFinitePolicy:
    """`train.on_nonfinite` for the steps DeepSpeed skipped: stop, skip, or roll back to the last checkpoint and
    skip the batch window that produced the step from then on.

    The skipped windows, the rollback counts and the count of non-finite steps persist in `<run>/faults.json`
    at once, so a run killed before its next checkpoint neither meets the same bad window again nor resets its
    rollback count and loops."""

    def __init__(self, policy: str, run_dir: Path, is_main: bool, resume: str = "auto"):
        self.policy, self.is_main = policy, is_main
        self.path = Path(run_dir) / FAULT_STATE
        self.nonfinite_steps = 0
        self.rollbacks: dict[str, int] = {}
        self.skip_windows: set[Window] = set()
        if resume != "never" and self.path.is_file():
            self._merge_saved()

    def next_window(self, sampler: Any) -> Window:
        """Advance `sampler` past the windows to skip; the window its next step draws."""
        while sampler.window_key() in self.skip_windows:
            log.warning("skipping the batch window at sampler position %s (it produced a non-finite step)",
                        sampler.window_key())
            sampler.next_step()
        return sampler.window_key()

    def handle(self, step: int, metrics: dict[str, torch.Tensor], module: torch.nn.Module, window: Window,
               ckpt_root: Path) -> Path | None:
        """Apply the policy to the skipped `step`, drawn from `window`: raises NonFiniteError (stop, or nothing
        left to roll back to), returns None (skip: go on) or the checkpoint to roll back to."""
        self.nonfinite_steps += 1
        message = diagnose(step, metrics, module)
        if self.policy == "stop":
            raise NonFiniteError(message + "; stopping (train.on_nonfinite=stop)")
        if self.policy == "skip":
            log.warning("%s; continuing (%d skipped so far)", message, self.nonfinite_steps)
            self._save()
            return None
        ckpt = latest(ckpt_root)
        if ckpt is None:
            raise NonFiniteError(message + "; no checkpoint to roll back to")
        self.rollbacks[ckpt.name] = self.rollbacks.get(ckpt.name, 0) + 1
        if self.rollbacks[ckpt.name] > MAX_ROLLBACKS:
            raise NonFiniteError(f"{message}; already rolled back to {ckpt} {MAX_ROLLBACKS} times, the run "
                                 "diverges from there whatever data it skips: stopping")
        log.warning("%s; rolling back to %s and skipping this batch window", message, ckpt)
        self.skip_windows.add(window)
        self._save()
        return ckpt

    def _save(self) -> None:
        if self.is_main:
            atomic_write_json(self.path, {"nonfinite_steps": self.nonfinite_steps, "rollbacks": self.rollbacks,
                                          "skip_windows": sorted(self.skip_windows)})

    def _merge_saved(self) -> None:
        """Merge faults.json into this run's state (the larger count, the union of windows)."""
        try:
            saved = json.loads(self.path.read_text())
            windows = {(int(e), int(p)) for e, p in saved["skip_windows"]}
            rollbacks = {str(k): int(v) for k, v in saved["rollbacks"].items()}
            nonfinite = int(saved["nonfinite_steps"])
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{self.path} is damaged ({err}); delete it to resume without the skipped batch "
                              "windows it recorded") from None
        self.skip_windows |= windows
        for name, count in rollbacks.items():
            self.rollbacks[name] = max(count, self.rollbacks.get(name, 0))
        self.nonfinite_steps = max(self.nonfinite_steps, nonfinite)
        if windows:
            log.warning("%s: skipping %d batch window(s) that produced non-finite steps before", self.path,
                        len(windows))
