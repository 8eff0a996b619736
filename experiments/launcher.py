"""The launcher of every orchestrated run (LAG, gradual stacking and their experiments): one phase of a run through
the real launcher (`python -m launch`, or `python -m pretrain` for one CPU rank), and what a run has written.

A run is trained in phases that all use `train.resume=auto`: a later phase resumes the same run directory with
a larger `train.steps`. Schedule: the trainer has no "stop before the schedule ends" option, so every phase
but a run's last runs at constant lr after warmup (`train.schedule=constant`), and the last phase follows the
config's schedule, whose decay then spans the whole run (the scheduler is rebuilt from the new train.steps on
resume and keeps its step count). During a lag of k << train.steps a cosine schedule is within a few percent
of its peak anyway; every candidate gets the same schedule, which is what LAG needs.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from growth import GrowthError
from launch.command import has_gpus, launch_env, trainer_argv
from settings.errors import UserError, user_errors
from storage import run_files
from storage.folders import CheckpointError, latest
from storage.io import atomic_write_text

MANAGED = ("model.", "run.name", "run.out_dir", "train.init_from", "train.steps", "train.resume")
"""Override keys the orchestrator sets itself for the runs it starts; a user's value for them would be silently lost."""


class RunError(UserError, RuntimeError):
    """A training run that failed; the message names its log file and ends with the log's tail."""


def exit_code(work: Callable[[], int]) -> int:
    """Run an orchestrating command: a refused input or a failed run prints its named error (exit 2), an
    interrupt says how to resume (130); else `work`'s own exit code."""
    try:
        return user_errors(work)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def check_user_overrides(overrides: Sequence[str]) -> None:
    """Refuse overrides of what growth manages, naming the option that sets it instead."""
    bad = [o for o in overrides if "=" not in o or o.split("=", 1)[0].startswith(MANAGED)]
    if bad:
        raise GrowthError(f"overrides {bad} are not key=value or set keys growth manages ({', '.join(MANAGED)}): "
                          "the model shape comes from --to, run names from --out, steps from --lag-steps / "
                          "--continue-steps / --validate-steps")


def step_reached(run_dir: Path) -> int:
    """The step of the run's newest complete checkpoint (0 when it has none)."""
    try:
        ckpt = latest(Path(run_dir) / "checkpoints")
    except CheckpointError:  # `latest` names a damaged checkpoint: train the phase again
        return 0
    return 0 if ckpt is None else json.loads((ckpt / "manifest.json").read_text())["step"]


def val_curve(run_dir: Path) -> dict[int, float]:
    """step -> validation loss, from the run's metrics."""
    return run_files.curve(run_dir, "val/loss")


def train_phase(run_dir: Path, config: Path, overrides: Sequence[str], steps: int, *, final: bool,
                ranks: int, label: str, eval_every: int | None = None, eval_at: Sequence[int] = ()) -> bool:
    """Train `run_dir` up to `steps` (resuming it), unless it already got there; True when it trained.

    `final`: this is the run's last phase (the config's schedule) rather than a lag or an intermediate stage
    (constant lr after warmup; see the module docstring). `eval_every` overrides the config's (a lag needs
    val/loss at every step); `eval_at` adds validations at exactly these steps (a long run read at a few).
    Output goes to `<run_dir>.log`."""
    run_dir = Path(run_dir).resolve()
    reached = step_reached(run_dir)
    if reached >= steps:
        print(f"[growth] {label}: already at step {reached} >= {steps}, skipped", flush=True)
        return False
    phase = [f"train.steps={steps}", "train.resume=auto", f"run.out_dir={run_dir.parent}", f"run.name={run_dir.name}"]
    if not final:
        phase.append("train.schedule=constant")
    if eval_every is not None:
        phase.append(f"eval.every={eval_every}")
    if eval_at:
        phase.append(f"eval.at=[{','.join(str(s) for s in sorted(set(eval_at)))}]")
    cmd = trainer_argv(Path(config).resolve(), [*overrides, *phase], ranks)
    log_path = run_dir.with_name(run_dir.name + ".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[growth] {label}: steps {reached}..{steps} -> {run_dir} (log {log_path})", flush=True)
    start = time.time()
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=launch_env(ranks, has_gpus()))
    if rc != 0 or step_reached(run_dir) < steps:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise RunError(f"{label}: training failed (exit {rc}); log {log_path}, last lines:\n{tail}")
    curve = val_curve(run_dir)
    print(f"[growth] {label}: done in {time.time() - start:.0f}s, val/loss at step {steps}: "
          f"{curve.get(steps, float('nan')):.4f}", flush=True)
    return True


def claim_experiment(out: Path, identity: dict[str, Any]) -> None:
    """Create `out/plan.json`, or check that the experiment already there is this one, so that re-running a
    command resumes it and a re-run with other settings cannot mix two experiments' runs."""
    path = Path(out) / "plan.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = {k: (previous.get(k), v) for k, v in identity.items() if previous.get(k) != v}
        if changed:
            raise GrowthError(f"{out} holds an experiment with other settings {changed} (old, new); choose a new "
                              "--out, or re-run with the same settings to resume it")
        return
    if path.parent.exists() and any(path.parent.iterdir()):
        raise GrowthError(f"--out {out} exists, is not empty and holds no plan.json; choose a new --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(identity, indent=2))
