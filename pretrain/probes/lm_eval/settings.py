"""What an lm_eval job evaluates and how: one dataclass shared by the CLI, the trainer's schedule and the job.

Settings only (no lm_eval, no torch) because the run config imports it; lm_eval is imported by the job alone.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from settings.errors import UserError
from settings.fields import a_device, above, at_least, check_fields
from pretrain.probes.cli import setting
from pretrain.probes.schedule import JobSchedule
from pretrain.probes.registry import register_job

SHIPPED_TASKS = Path(__file__).resolve().parents[3] / "configs" / "eval_tasks"
"""The shipped example tasks (local JSONL): the default include path."""
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
"""Set unless already set: without them `datasets` pings the Hub (harmless offline, but noisy and slow)."""


class LmEvalError(UserError, ValueError):
    """Settings, tasks or inputs an lm_eval job cannot run with; the message names the setting or file."""


@dataclass
class LmEvalSettings:
    """Downstream evaluation of one checkpoint through lm-evaluation-harness."""

    tasks: List[str] = setting(["growlm_capitals", "growlm_paragraphs"],
                               "lm-eval task (or tag/group) names: local ones from include_path, else lm-eval's "
                               "built-ins")
    include_path: Optional[str] = setting(None, "folder of task YAMLs, searched recursively (None: "
                                                "configs/eval_tasks, the shipped examples)")
    limit: Optional[int] = setting(None, "evaluate only the first N documents of each task (None: all), for "
                                         "quick checks", valid=above(0))
    batch_size: int = setting(8, "sequences per forward pass", valid=above(0))
    device: str = setting("cpu", "torch device for the job (cpu keeps it off the training accelerators)",
                          valid=a_device())
    threads: int = setting(0, "torch CPU threads (0: torch's default); beside CPU training ranks a few keep it "
                              "from starving them", valid=at_least(0))

    def tasks_dir(self) -> Path:
        return Path(self.include_path).expanduser().resolve() if self.include_path else SHIPPED_TASKS


@dataclass
class LmEvalConfig(JobSchedule, LmEvalSettings):
    """When the trainer runs the lm_eval job (the `jobs.lm_eval` config section), plus the job's settings."""

    def check(self) -> None:
        if self.every == 0:  # disabled: only each field's rule (a task list is not needed)
            self.check_schedule()
            return
        check_settings(self)  # every field's rule (the schedule's too), then the tasks
        if importlib.util.find_spec("lm_eval") is None:
            raise LmEvalError("every > 0 needs lm-evaluation-harness: pip install 'growlm[eval]'")


def check_settings(s: LmEvalSettings) -> None:
    """Refuse settings that cannot run, naming the setting (tasks themselves are checked by `tasks.plan`): each
    field's declared valid values, then the task list and folder."""
    try:
        check_fields(s)
    except ValueError as err:
        raise LmEvalError(str(err)) from None
    if not s.tasks or any(not t.strip() or "," in t for t in s.tasks):
        raise LmEvalError(f"tasks={s.tasks} must be a non-empty list of task names")
    if not s.tasks_dir().is_dir():
        raise LmEvalError(f"include_path={s.include_path!r}: no such folder of task YAMLs")


register_job("lm_eval", LmEvalConfig, "pretrain.probes.lm_eval.callback:LmEvalJob",
             "Downstream evaluation with lm-evaluation-harness (pip install 'growlm[eval]').")
