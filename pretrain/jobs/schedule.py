"""Scheduling periodic jobs from the trainer: the `jobs:` config section and the callbacks it builds.

PeelingJob runs after every `every`-th checkpoint save (and after the final one), on rank 0 only: it reads
the saved checkpoint from disk, so under any ZeRO stage the other ranks need do nothing and just continue.
- mode `process` (default): a detached `python -m pretrain.jobs.peeling --checkpoint <ckpt> --out <dir> ...`
  with its output in `<run>/jobs/peeling/step_<N>/job.log`; training never waits for it. A job that exits
  non-zero is reported (naming its log) at a later checkpoint or at the end of training.
- mode `inline`: the job runs inside rank 0 (for tests and small models); the other ranks wait for rank 0 at
  their next collective, so training pauses while it runs.
A failing job logs an error and never disturbs training or the checkpoint (jobs only read checkpoints).
"""
from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pretrain.callbacks import Callback
from pretrain.jobs.peeling.errors import PeelingError
from pretrain.jobs.peeling.settings import PeelingSettings, check_settings, to_argv

if TYPE_CHECKING:
    from pretrain.trainer import Trainer

log = logging.getLogger("growlm")
MODES = ("process", "inline")


@dataclass
class PeelingConfig(PeelingSettings):
    """When to run peeling bounds during training (METHODS.md §3), plus the job's settings."""

    every: int = 0
    """Run after every this-many-th checkpoint save, and after the final one (0 disables)."""
    mode: str = "process"
    """process: a detached subprocess per checkpoint (never blocks training) | inline: inside rank 0."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PeelingError(f"jobs.peeling.mode={self.mode!r}: choose one of {list(MODES)}")
        if self.every < 0:
            raise PeelingError(f"jobs.peeling.every={self.every} must be >= 0")
        check_settings(self)


@dataclass
class JobsConfig:
    peeling: PeelingConfig = field(default_factory=PeelingConfig)
    """Peeling bounds on saved checkpoints."""


class PeelingJob(Callback):
    def __init__(self, cfg: PeelingConfig):
        self.cfg = cfg
        self.running: list[tuple[subprocess.Popen, Path]] = []

    def due(self, trainer: "Trainer") -> bool:
        """By checkpoint count (from the step, so a resumed run keeps the same schedule), and at the end."""
        every_ckpt = trainer.cfg.checkpoint.every
        index = trainer.step // every_ckpt if every_ckpt else 0
        return index % self.cfg.every == 0 or trainer.step == trainer.cfg.train.steps

    def on_checkpoint_saved(self, trainer: "Trainer", path: Path) -> None:
        if not trainer.is_main:
            return
        self._reap()
        if not self.due(trainer):
            return
        out = Path(trainer.run_dir) / "jobs" / "peeling" / Path(path).name
        try:
            if self.cfg.mode == "inline":
                from pretrain.jobs.peeling.job import run_job

                run_job(path, self.cfg, config=trainer.cfg, out=out)
            else:
                self.running.append((self.launch(Path(path), out), out))
        except Exception:  # a job must never take training down
            log.exception("peeling job on %s failed; training continues", path)

    def launch(self, ckpt: Path, out: Path) -> subprocess.Popen:
        """Start the job detached (own session, no stdin), its output in out/job.log."""
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pretrain.jobs.peeling", "--checkpoint", str(ckpt), "--out", str(out),
               *to_argv(self.cfg)]
        with open(out / "job.log", "w") as job_log:
            proc = subprocess.Popen(cmd, stdout=job_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        log.info("peeling job started on %s (pid %d), log %s", ckpt, proc.pid, out / "job.log")
        return proc

    def _reap(self) -> None:
        """Collect finished jobs (no zombies) and report the failed ones; never waits."""
        still = []
        for proc, out in self.running:
            code = proc.poll()
            if code is None:
                still.append((proc, out))
            elif code != 0:
                log.error("peeling job pid %d exited with %d; see %s", proc.pid, code, out / "job.log")
        self.running = still

    def on_train_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self._reap()
        for proc, out in self.running:
            log.info("peeling job pid %d still running after training; its log: %s", proc.pid, out / "job.log")


def build_jobs(cfg: JobsConfig) -> list[Callback]:
    """The job callbacks a config enables."""
    return [PeelingJob(cfg.peeling)] if cfg.peeling.every > 0 else []
