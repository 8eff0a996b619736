"""The trainer's side of the lm_eval job: after every `every`-th checkpoint save (and the final one), on rank 0.

Mirrors the peeling job's schedule (pretrain/jobs/schedule.py): the job reads the saved checkpoint from disk,
so under any ZeRO stage the other ranks do nothing.
- mode `process` (default): a detached `python -m pretrain.jobs.lm_eval --checkpoint <ckpt> ...`, its output
  in `<run>/jobs/lm_eval/step_<N>/job.log`; training never waits. A job that exits non-zero is reported
  (naming its log) at a later checkpoint or at the end of training.
- mode `inline`: inside rank 0 (tests, small models); the other ranks wait at their next collective.
The job itself writes the scores (results.json, `jobs/lm_eval/metrics.jsonl`, TensorBoard `tb/lm_eval`), so
a job finishing after training ended still lands. Task names, files and metrics are checked once at the
start of training: a mistake is reported then, and the job is switched off rather than failing later.
"""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pretrain.callbacks import Callback
from pretrain.jobs.lm_eval.settings import LmEvalConfig, LmEvalError, to_argv

if TYPE_CHECKING:
    from pretrain.trainer import Trainer

log = logging.getLogger("growlm")


class LmEvalJob(Callback):
    def __init__(self, cfg: LmEvalConfig):
        self.cfg = cfg
        self.enabled = cfg.every > 0
        self.running: list[tuple[subprocess.Popen, Path]] = []

    def due(self, trainer: "Trainer") -> bool:
        """By checkpoint count (from the step, so a resumed run keeps the same schedule), and at the end."""
        every_ckpt = trainer.cfg.checkpoint.every
        index = trainer.step // every_ckpt if every_ckpt else 0
        return index % self.cfg.every == 0 or trainer.step == trainer.cfg.train.steps

    def on_train_start(self, trainer: "Trainer") -> None:
        if not (trainer.is_main and self.enabled):
            return
        from pretrain.jobs.lm_eval.tasks import plan

        try:
            plan(self.cfg)
        except LmEvalError as err:
            self.enabled = False
            log.error("lm_eval job disabled for this run: %s", err)

    def on_checkpoint_saved(self, trainer: "Trainer", path: Path) -> None:
        if not trainer.is_main:
            return
        self._reap()
        if not (self.enabled and self.due(trainer)):
            return
        try:
            if self.cfg.mode == "inline":
                from pretrain.jobs.lm_eval.run import run_job

                run_job(path, self.cfg)
            else:
                self.running.append(self.launch(Path(path)))
        except Exception:  # a job must never take training down
            log.exception("lm_eval job on %s failed; training continues", path)

    def launch(self, ckpt: Path) -> tuple[subprocess.Popen, Path]:
        """Start the job detached (own session, no stdin); returns it and its log file."""
        from pretrain.jobs.lm_eval.run import locate

        if self.running:
            log.warning("%d lm_eval job(s) still running at %s: evaluations are piling up, consider a larger "
                        "jobs.lm_eval.every", len(self.running), ckpt)
        out = locate(ckpt).out
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pretrain.jobs.lm_eval", "--checkpoint", str(ckpt), *to_argv(self.cfg)]
        with open(out / "job.log", "w") as job_log:
            proc = subprocess.Popen(cmd, stdout=job_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        log.info("lm_eval job started on %s (pid %d), log %s", ckpt, proc.pid, out / "job.log")
        return proc, out / "job.log"

    def _reap(self) -> None:
        """Collect finished jobs (no zombies) and report the failed ones; never waits."""
        still = []
        for proc, job_log in self.running:
            code = proc.poll()
            if code is None:
                still.append((proc, job_log))
            elif code != 0:
                log.error("lm_eval job pid %d exited with %d; see %s", proc.pid, code, job_log)
        self.running = still

    def on_train_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self._reap()
        for proc, job_log in self.running:
            log.info("lm_eval job pid %d still running after training; it writes its scores when done (log %s)",
                     proc.pid, job_log)


def build_lm_eval_job(cfg: LmEvalConfig) -> list[Callback]:
    """The callback a `jobs.lm_eval` section enables (none when every == 0)."""
    return [LmEvalJob(cfg)] if cfg.every > 0 else []
