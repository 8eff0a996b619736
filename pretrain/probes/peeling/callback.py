"""The trainer's side of the peeling job (scheduling in pretrain/probes/detached.py, settings in settings.py)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pretrain.probes.detached import CheckpointJob

if TYPE_CHECKING:
    from pretrain.trainer import Trainer


class PeelingJob(CheckpointJob):
    name = "peeling"
    module = "pretrain.probes.peeling"

    def argv(self, ckpt: Path, out: Path) -> list[str]:
        return ["--out", str(out), *super().argv(ckpt, out)]

    def run_inline(self, trainer: "Trainer", ckpt: Path, out: Path) -> None:
        from pretrain.probes.peeling.job import run_job

        run_job(ckpt, self.cfg, config=trainer.cfg, out=out)
