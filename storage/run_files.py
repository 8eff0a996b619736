"""The files of a run directory (`runs/<name>/`, docs/guide.md "What a run writes"), named once, and their readers.

The trainer writes them; growth, experiments, the benchmarks and the chaos harness read them back. Spelling a
file name in each reader let them drift apart (a torn last line was tolerated in one reader and a crash in
the next), so every reader goes through here.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from storage.io import FileFormatError

log = logging.getLogger("growlm")

CONFIG = "config.yaml"
"""The run's resolved config."""
METRICS = "metrics.jsonl"
"""One JSON record per logged step (and one per validation, monitor, job result)."""
TIMING = "timing.json"
"""Wall time of the loop by phase, and the training throughput."""
FAULTS = "faults.json"
"""What the non-finite policy learned (skipped and rolled-back steps), kept across resumes."""
JOBS = "jobs"
"""Outputs of checkpoint jobs: jobs/<job>/step_<N>/, and jobs/<job>/metrics.jsonl where a job logs records."""


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON records of a metrics file, one per line; a line that is not one is named. A torn last line (a
    run killed mid-write, which a resume drops) is left out with a warning."""
    lines = [(i, line) for i, line in enumerate(Path(path).read_text().splitlines(), 1) if line.strip()]
    records = []
    for i, line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == lines[-1][0]:
                log.warning("warning: %s line %d is torn (%s): left out", path, i, err)
                continue
            raise FileFormatError(f"{path} line {i} is not a JSON record ({err}): is it a growlm metrics file?") from None
    return records


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics records; a run that never started is named."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise FileFormatError(f"{path} does not exist: is {run_dir} a growlm run directory that started?")
    return read_records(path)


def curve(run_dir: Path, key: str) -> dict[int, float]:
    """step -> the value of `key` at every step whose record has it (e.g. `val/loss`, `loss`)."""
    return {r["step"]: r[key] for r in metrics(run_dir) if key in r}


def timing(run_dir: Path) -> dict[str, Any]:
    """The run's timing.json (written when its loop ends)."""
    return json.loads((Path(run_dir) / TIMING).read_text())


def job_output(run_dir: Path, job: str, checkpoint: str) -> Path:
    """Where job `job` writes its outputs for the checkpoint folder named `checkpoint` (step_<N>)."""
    return Path(run_dir) / JOBS / job / checkpoint
