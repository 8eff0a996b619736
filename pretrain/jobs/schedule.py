"""When a job runs: the `every` / `mode` settings every job section shares (settings only, no callbacks)."""
from __future__ import annotations

from dataclasses import dataclass

from pretrain.jobs.cli import setting

MODES = ("process", "inline")


@dataclass
class JobSchedule:
    """Mixed into a job's settings to make its `jobs.<name>` config section (pretrain/plugins.py)."""

    every: int = setting(0, "run after every this-many-th checkpoint save, and after the final one (0 disables)",
                         cli=False)
    mode: str = setting("process", "process: a detached subprocess per checkpoint (never blocks training) | "
                                   "inline: inside rank 0", cli=False)

    def check_schedule(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: choose one of {list(MODES)}")
