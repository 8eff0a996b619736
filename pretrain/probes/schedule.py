"""When a job runs: the `every` / `mode` settings every job section shares (settings only, no callbacks)."""
from __future__ import annotations

from dataclasses import dataclass

from settings.fields import at_least, check_fields, one_of
from pretrain.probes.cli import setting

MODES = ("process", "inline")


@dataclass
class JobSchedule:
    """Mixed into a job's settings to make its `jobs.<name>` config section (pretrain/probes/registry.py)."""

    every: int = setting(0, "run after every this-many-th checkpoint save, and after the final one (0 disables)",
                         cli=False, valid=at_least(0))
    mode: str = setting("process", "process: a detached subprocess per checkpoint (never blocks training) | "
                                   "inline: inside rank 0", cli=False, valid=one_of(MODES))

    def check_schedule(self) -> None:
        """Every field's declared valid values: the schedule's and the job's own (settings/fields.py)."""
        check_fields(self)
