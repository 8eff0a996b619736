"""Arm x seed experiments: every arm of a spec trained with every seed (one `python -m launch` each, in turn),
then the runs compared (experiments/compare.py).

    python -m experiments configs/experiments/jreg_vs_baseline.yaml --out runs/jreg_vs_baseline
    python -m experiments SPEC.yaml --out DIR --dry-run                 # print the plan
    python -m experiments SPEC.yaml --out DIR --arms baseline --seeds 0,1 train.steps=100

Spec (YAML): `base` config (relative to the repository root), `ranks`, `seeds`, shared `overrides` and
`arms` (name -> overrides), each overrides a mapping of config key -> value. Runs go to DIR/runs/<arm>-s<seed>
with launcher logs in DIR/logs/; a run whose checkpoints/latest is already at the final step is skipped and
an unfinished one resumes (train.resume: auto), so an interrupted experiment is continued by rerunning it.
Extra `key=value` arguments apply to every run, after the spec's. compare.md and its plots go into DIR at the end.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from experiments import compare
from experiments.errors import ExperimentError
from experiments.runs import run_dir_name
from launch.command import launch_argv, render_overrides
from pretrain.config import load_config
from storage import folders
from storage.io import check_output_folder, claim_output_folder, read_yaml

ROOT = Path(__file__).resolve().parent.parent
"""The repository root: a spec's `base` config is relative to it, and runs start there."""

MARKER = ".growlm-experiment"
"""Marks an --out folder the spec runner made (re-running the spec there resumes it)."""
SPEC_KEYS = {"base", "ranks", "seeds", "overrides", "arms"}


@dataclass
class Spec:
    base: Path
    ranks: int
    seeds: list[int]
    overrides: list[str]
    arms: dict[str, list[str]]


@dataclass
class Job:
    """One arm x seed run: what to launch and how to tell it is already finished."""

    name: str
    arm: str
    run_dir: Path
    overrides: list[str]
    steps: int

    def command(self, spec: Spec) -> list[str]:
        """`python -m launch` picks a free rendezvous port itself, so runs never collide."""
        return launch_argv(spec.base, self.overrides, spec.ranks)

    def is_complete(self) -> bool:
        """checkpoints/latest names a complete checkpoint at the final step."""
        try:
            ckpt = folders.latest(self.run_dir / "checkpoints")
        except folders.CheckpointError:
            return False
        return ckpt is not None and folders.verify(ckpt)["step"] >= self.steps


def load_spec(path: Path) -> Spec:
    """Read and check an experiment spec; errors name the file and the offending key."""
    loaded = read_yaml(path, "experiment spec")
    raw = OmegaConf.to_container(loaded) if loaded is not None else {}
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path}: an experiment spec is a mapping with keys {sorted(SPEC_KEYS)}")
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise ExperimentError(f"{path}: unknown keys {sorted(unknown)} (valid: {sorted(SPEC_KEYS)})")
    if not raw.get("arms") or not isinstance(raw["arms"], dict):
        raise ExperimentError(f"{path}: `arms` must map at least one arm name to its overrides")
    base = ROOT / raw.get("base", "configs/tiny.yaml")
    if not base.is_file():
        raise ExperimentError(f"{path}: base config {base} does not exist")
    ranks, seeds = raw.get("ranks", 2), raw.get("seeds", [0])
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 1:
        raise ExperimentError(f"{path}: ranks={ranks!r} must be an integer >= 1")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise ExperimentError(f"{path}: seeds={seeds!r} must be a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise ExperimentError(f"{path}: seeds={seeds} lists a seed twice (each arm x seed is one run)")
    bad_names = [name for name in raw["arms"] if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(name))]
    if bad_names:
        raise ExperimentError(f"{path}: arm names {bad_names} must be letters, digits, '_', '-' or '.' (they name run "
                              "directories under --out)")
    return Spec(base=base, ranks=ranks, seeds=seeds,
                overrides=render_overrides(raw.get("overrides"), f"{path}: overrides"),
                arms={name: render_overrides(o, f"{path}: arms.{name}") for name, o in raw["arms"].items()})


def plan(spec: Spec, out: Path, arms: Optional[list[str]] = None, seeds: Optional[list[int]] = None,
         extra: tuple[str, ...] = ()) -> list[Job]:
    """Every selected arm x seed as a Job, arm-major; each config is validated here, before anything runs."""
    off_plan = sorted(set(seeds or []) - set(spec.seeds))
    if off_plan:  # a seed added after seeing results would be optional stopping
        raise ExperimentError(f"--seeds {off_plan} not in the spec's seed plan {spec.seeds}: add seeds to the spec "
                              "(every arm) before running, or run extra seeds as a separate, exploratory experiment")
    unknown = set(arms or []) - set(spec.arms)
    if unknown:
        raise ExperimentError(f"unknown arm(s) {sorted(unknown)}; the spec has {list(spec.arms)}")
    jobs = []
    for arm in arms or spec.arms:
        for seed in spec.seeds if seeds is None else seeds:
            name = run_dir_name(arm, seed)
            overrides = [f"run.out_dir={out / 'runs'}", f"run.name={name}", f"run.seed={seed}",
                         *spec.overrides, *spec.arms[arm], *extra]
            steps = load_config(spec.base, overrides).train.steps
            jobs.append(Job(name, arm, out / "runs" / name, overrides, steps))
    return jobs


def run_jobs(jobs: list[Job], spec: Spec, out: Path) -> None:
    """Launch the unfinished jobs one after another; stops at the first failure, naming its log."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for i, job in enumerate(jobs, start=1):
        if job.is_complete():
            print(f"[{i}/{len(jobs)}] {job.name}: complete, skipped", flush=True)
            continue
        log = out / "logs" / f"{job.name}.log"
        start = time.perf_counter()
        with open(log, "a") as f:
            rc = subprocess.call(job.command(spec), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        if rc != 0 or not job.is_complete():
            raise ExperimentError(f"{job.name} failed (exit {rc}); see {log}")
        print(f"[{i}/{len(jobs)}] {job.name}: done in {time.perf_counter() - start:.0f}s", flush=True)


def run(spec_path: Path, out: Path, arms: Optional[list[str]], seeds: Optional[list[int]], extra: tuple[str, ...],
        dry_run: bool) -> int:
    """Plan, run the unfinished jobs (or print them) and write compare.md; the exit code."""
    spec = load_spec(spec_path)
    jobs = plan(spec, out, arms, seeds, extra)
    check_output_folder(out, MARKER)
    if dry_run:
        for job in jobs:
            print(("# complete, skipped: " if job.is_complete() else "") + shlex.join(job.command(spec)))
        return 0
    claim_output_folder(out, MARKER)
    run_jobs(jobs, spec, out)
    report = compare.compare([job.run_dir for job in jobs], out, names=[job.arm for job in jobs])
    print(report.read_text())
    return 0
