"""The trainer's side of a job on saved checkpoints: scheduling, detached processes, failures reported.

After every `every`-th checkpoint save (and the final one), on rank 0 only: jobs read the checkpoint from
disk, so under any ZeRO stage the other ranks do nothing.
- mode `process` (default): a detached `python -m <module> --checkpoint <ckpt> ...` in its own session, its
  output in `<out>/job.log`; training never waits, and a job that exits non-zero is reported (naming its
  log) at a later checkpoint or at the end of training.
- mode `inline`: inside rank 0 (tests, small models); the other ranks wait at their next collective.
A job never takes training down: any exception it raises is logged and training continues.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pretrain.callbacks import Callback
from pretrain.probes.cli import to_argv
from pretrain.probes.location import target_of
from storage.folders import step_of
from storage.retention import hold_for_reading

if TYPE_CHECKING:
    from pretrain.trainer import Trainer

log = logging.getLogger("growlm")


class CheckpointJob(Callback):
    """The one job base. Subclasses name the job and the module `python -m` runs, and say how it runs inline.

    `cfg` is the job's settings with the schedule mixed in (pretrain.probes.schedule.JobSchedule); its CLI
    fields become the detached job's flags. Its schedule derives from the step alone, so a job has no state to
    checkpoint: a resumed run schedules the same checkpoints.
    """

    name: str
    module: str

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.enabled = cfg.every > 0
        self.running: list[tuple[subprocess.Popen, Path]] = []

    def output_dir(self, trainer: "Trainer", ckpt: Path) -> Path:
        return target_of(ckpt, self.name).out

    def argv(self, ckpt: Path, out: Path) -> list[str]:
        return to_argv(self.cfg)

    def run_inline(self, trainer: "Trainer", ckpt: Path, out: Path) -> None:
        raise NotImplementedError

    def due(self, trainer: "Trainer", ckpt: Path) -> bool:
        """By checkpoint count, from the checkpoint's step (its `step_<N>` name, else the trainer's step): a
        resumed run keeps the same schedule, and an asynchronous save that completes steps later counts at
        the step it was taken. And at the end."""
        step = step_of(ckpt)
        step = trainer.step if step is None else step
        every_ckpt = trainer.cfg.checkpoint.every
        index = step // every_ckpt if every_ckpt else 0
        return index % self.cfg.every == 0 or step == trainer.cfg.train.steps

    def on_checkpoint_saved(self, trainer: "Trainer", path: Path) -> None:
        if not trainer.is_main:
            return
        self._reap()
        ckpt = Path(path)
        if not (self.enabled and self.due(trainer, ckpt)):
            return
        try:
            out = self.output_dir(trainer, ckpt)
            if self.cfg.mode == "inline":
                self.run_inline(trainer, ckpt, out)
            else:
                self.running.append(self.launch(ckpt, out))
        except Exception:  # a job must never take training down
            log.exception("%s job on %s failed; training continues", self.name, ckpt)

    def launch(self, ckpt: Path, out: Path) -> tuple[subprocess.Popen, Path]:
        """Start the job detached (own session, no stdin); returns it and its log file."""
        if self.running:
            log.warning("%d %s job(s) still running at %s: jobs are piling up, consider a larger "
                        "jobs.%s.every", len(self.running), self.name, ckpt, self.name)
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", self.module, "--checkpoint", str(ckpt), *self.argv(ckpt, out)]
        reading = hold_for_reading(ckpt)  # the job inherits it: pruning skips this checkpoint until the job ends
        try:
            with open(out / "job.log", "w") as job_log:
                proc = subprocess.Popen(cmd, stdout=job_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, pass_fds=() if reading is None else (reading,))
        finally:
            if reading is not None:
                os.close(reading)
        log.info("%s job started on %s (pid %d), log %s", self.name, ckpt, proc.pid, out / "job.log")
        return proc, out / "job.log"

    def _reap(self) -> None:
        """Collect finished jobs (no zombies) and report the failed ones; never waits."""
        still = []
        for proc, job_log in self.running:
            code = proc.poll()
            if code is None:
                still.append((proc, job_log))
            elif code != 0:
                log.error("%s job pid %d exited with %d; see %s", self.name, proc.pid, code, job_log)
        self.running = still

    def on_train_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self._report_left_running(logging.INFO, "after training")

    def on_train_abort(self, trainer: "Trainer", error: BaseException) -> None:
        if trainer.is_main:
            self._report_left_running(logging.WARNING, f"while training died ({type(error).__name__})")

    def _report_left_running(self, level: int, when: str) -> None:
        """Failed jobs as errors; each job still running by pid and log (it outlives training: own session)."""
        self._reap()
        for proc, job_log in self.running:
            log.log(level, "%s job pid %d still running %s; it writes its outputs when done (log %s)",
                    self.name, proc.pid, when, job_log)
