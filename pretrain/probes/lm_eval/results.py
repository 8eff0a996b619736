"""Where an lm_eval job's scores go: results.json per checkpoint, and the run's eval metrics file + TensorBoard.

`<run>/jobs/lm_eval/step_<N>/results.json` is the record of one evaluation (written atomically).
`<run>/jobs/lm_eval/metrics.jsonl` is derived from all of them: one `{step, tokens, eval/<task>/<metric>...}`
line per evaluated checkpoint, sorted by step, rebuilt under a file lock after every job. Being derived, it
stays right when checkpoints are re-evaluated, jobs finish out of order or a run resumes; and the job (a
detached process) is its only writer, so training's metrics.jsonl is never written by two processes.
"""
from __future__ import annotations

import fcntl
import json
import math
from pathlib import Path
from typing import Any

from storage import run_files
from storage.folders import step_of
from storage.io import atomic_write_json, atomic_write_text

RESULTS = "results.json"
PER_TASK = ("scores", "results", "n_samples", "versions")
"""The payload entries keyed by task (scores by eval/<task>/<metric>), merged across evaluations."""


def scores(task_results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """lm-eval's `results` -> {"eval/<task>/<metric>": value}; filter `none` dropped, stderr left out.

    lm-eval keys a score as "<metric>,<filter>"; a filter other than `none` is kept as "<metric>_<filter>".
    """
    out = {}
    for task, values in task_results.items():
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            name = metric if filt == "none" else f"{metric}_{filt}"
            out[f"eval/{task}/{name}"] = float(value)
    return out


def write_results(out: Path, payload: dict[str, Any]) -> Path:
    """Write `out/results.json` atomically, then rebuild the metrics.jsonl beside the step folders.

    An earlier evaluation of the same checkpoint is merged per task (a later run of other tasks adds to it,
    a rerun of a task replaces that task's entries). Locked: jobs may finish together.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS
    with open(out.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        payload = json.loads(json.dumps(payload, default=str))
        if path.is_file():
            payload = _merge(json.loads(path.read_text()), payload)
        atomic_write_json(path, payload)
        records = collect(out.parent)
        atomic_write_text(out.parent / run_files.METRICS, "".join(json.dumps(r) + "\n" for r in records))
    return path


def _merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    merged = dict(new)
    for key in PER_TASK:
        merged[key] = {**(old.get(key) or {}), **(new.get(key) or {})}
    return merged


def collect(jobs_dir: Path) -> list[dict[str, Any]]:
    """One metrics record per `step_<N>/results.json` under jobs_dir, sorted by step."""
    records = []
    for path in jobs_dir.glob(f"step_*/{RESULTS}"):
        if step_of(path.parent) is not None:
            data = json.loads(path.read_text())
            records.append({"step": data["step"], "tokens": data["tokens"], **data["scores"]})
    return sorted(records, key=lambda r: r["step"])


def to_tensorboard(tb_dir: Path, step: int, values: dict[str, float]) -> None:
    """One checkpoint's scores, in event files of their own (the run's `tb/lm_eval`)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tb_dir))
    try:
        for key, value in values.items():
            if math.isfinite(value):
                writer.add_scalar(key, value, step)
    finally:
        writer.close()
