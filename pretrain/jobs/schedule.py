"""The `jobs:` config section and the job callbacks it builds (scheduling in pretrain/jobs/detached.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pretrain.callbacks import Callback
from pretrain.jobs.detached import CheckpointJob
from pretrain.jobs.lm_eval.schedule import build_lm_eval_job
from pretrain.jobs.lm_eval.settings import LmEvalConfig
from pretrain.jobs.peeling.errors import PeelingError
from pretrain.jobs.peeling.settings import PeelingSettings, check_settings, to_argv

if TYPE_CHECKING:
    from pretrain.trainer import Trainer

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
        try:
            check_settings(self)
        except PeelingError as err:  # the settings name themselves as CLI flags; in a config they live here
            raise PeelingError(f"jobs.peeling.{err}") from None


@dataclass
class JobsConfig:
    peeling: PeelingConfig = field(default_factory=PeelingConfig)
    """Peeling bounds on saved checkpoints."""
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)
    """Downstream evaluation with lm-evaluation-harness (pip install 'growlm[eval]')."""


class PeelingJob(CheckpointJob):
    name = "peeling"
    module = "pretrain.jobs.peeling"

    def output_dir(self, trainer: "Trainer", ckpt: Path) -> Path:
        return Path(trainer.run_dir) / "jobs" / "peeling" / ckpt.name

    def argv(self, ckpt: Path, out: Path) -> list[str]:
        return ["--out", str(out), *to_argv(self.cfg)]

    def run_inline(self, trainer: "Trainer", ckpt: Path, out: Path) -> None:
        from pretrain.jobs.peeling.job import run_job

        run_job(ckpt, self.cfg, config=trainer.cfg, out=out)


def build_jobs(cfg: JobsConfig) -> list[Callback]:
    """The job callbacks a config enables."""
    jobs: list[Callback] = [PeelingJob(cfg.peeling)] if cfg.peeling.every > 0 else []
    return jobs + build_lm_eval_job(cfg.lm_eval)
