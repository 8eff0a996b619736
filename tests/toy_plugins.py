"""A job and a monitor of a user's own, each registered from this one file (named in a config's `imports:`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.callbacks import Callback
from pretrain.probes.cli import setting
from pretrain.probes.detached import CheckpointJob
from pretrain.probes.schedule import JobSchedule
from pretrain.probes.registry import register_job, register_monitor


@dataclass
class ToyJobSettings(JobSchedule):
    label: str = setting("toy", "written into every output, to show the settings reach the job")


class ToyJob(CheckpointJob):
    name = "toy"
    module = "toy_plugins"

    def run_inline(self, trainer: Any, ckpt: Path, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "seen.json").write_text(json.dumps({"checkpoint": ckpt.name, "label": self.cfg.label,
                                                   "complete": (ckpt / "manifest.json").is_file()}))


@dataclass
class CountingMonitorSettings:
    every: int = 0


class CountingMonitor(Callback):
    """Counts the steps it has seen; the count must survive a resume through the checkpoint."""

    def __init__(self, cfg: CountingMonitorSettings):
        self.cfg, self.seen = cfg, 0

    def on_step_end(self, trainer: Any, record: dict[str, Any]) -> None:
        self.seen += 1
        if trainer.step % self.cfg.every == 0:
            record["toy/steps_seen"] = self.seen

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = state["seen"]


register_job("toy", ToyJobSettings, ToyJob)
register_monitor("counting", CountingMonitorSettings, CountingMonitor)
