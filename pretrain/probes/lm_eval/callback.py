"""The trainer's side of the lm_eval job (scheduling in pretrain/probes/detached.py, settings in settings.py).

The job itself writes the scores (results.json, `jobs/lm_eval/metrics.jsonl`, TensorBoard `tb/lm_eval`), so
a job finishing after training ended still lands.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pretrain.probes.detached import CheckpointJob
from pretrain.probes.lm_eval.settings import LmEvalError

if TYPE_CHECKING:
    from pretrain.trainer import Trainer

log = logging.getLogger("growlm")


class LmEvalJob(CheckpointJob):
    name = "lm_eval"
    module = "pretrain.probes.lm_eval"

    def run_inline(self, trainer: "Trainer", ckpt: Path, out: Path) -> None:
        from pretrain.probes.lm_eval.run import run_job

        run_job(ckpt, self.cfg)

    def on_train_start(self, trainer: "Trainer") -> None:
        """Check task names, files and metrics once: a mistake switches the job off instead of failing later."""
        if not (trainer.is_main and self.enabled):
            return
        from pretrain.probes.lm_eval.tasks import plan

        try:
            plan(self.cfg)
        except LmEvalError as err:
            self.enabled = False
            log.error("lm_eval job disabled for this run: %s", err)
