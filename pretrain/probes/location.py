"""Where a job reads and writes: the checkpoint a user named, its step, its run, the job's output folder.

One rule for every job: a run's checkpoint `<run>/checkpoints/step_<N>` writes to `<run>/jobs/<job>/step_<N>/`;
anything else (a weights folder, a transformers folder) to `<parent>/jobs/<job>/<name>/`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from storage import folders, run_files


@dataclass
class Target:
    checkpoint: Path
    step: int | None
    out: Path
    run_dir: Path | None
    """The training run the checkpoint belongs to, else None."""


def locate(path: str | Path, job: str) -> Target:
    """A checkpoint dir, a `checkpoints/` root or its `latest` file, or a weights folder -> its Target
    (raises folders.CheckpointError naming what is missing)."""
    return target_of(folders.locate(Path(path)), job)


def target_of(ckpt: Path, job: str) -> Target:
    """The Target of a checkpoint folder as named, not checked (a job started on a missing one says so)."""
    step = folders.step_of(ckpt)
    if step is not None and ckpt.parent.name == "checkpoints":
        run_dir = ckpt.parent.parent
        return Target(ckpt, step, run_files.job_output(run_dir, job, ckpt.name), run_dir)
    return Target(ckpt, step, run_files.job_output(ckpt.parent, job, ckpt.name), None)
