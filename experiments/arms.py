"""Arm x seed experiments: every arm of a spec trained with every seed (one `python -m launch` each, in turn),
then the runs compared (experiments/compare.py).

    python -m experiments configs/experiments/jreg_vs_baseline.yaml --out runs/jreg_vs_baseline
    python -m experiments SPEC.yaml --out DIR --dry-run                 # print the plan
    python -m experiments SPEC.yaml --out DIR --arms baseline --seeds 0,1 train.steps=100

The spec (experiments/spec.py): `base` config, `ranks`, `seeds`, shared `overrides`, `arms` (name -> overrides)
and an optional pre-registered `protocol` (experiments/protocol.py). Runs go to DIR/runs/<arm>-s<seed>
with launcher logs in DIR/logs/; a run whose checkpoints/latest is already at the final step is skipped and
an unfinished one resumes (train.resume: auto), so an interrupted experiment is continued by rerunning it.
Extra `key=value` arguments apply to every run, after the spec's. compare.md and its plots go into DIR at the end.
"""
from __future__ import annotations

import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from experiments import compare
from experiments.errors import ExperimentError
from experiments.runs import flatten, run_dir_name
from experiments.spec import KINDS, ROOT, Kind, Spec, load_spec
from launch.command import launch_argv
from pretrain.config import Config, load_config, to_yaml
from storage import folders, run_files
from storage.io import check_output_folder, claim_output_folder

MARKER = ".growlm-experiment"
"""Marks an --out folder the spec runner made (re-running the spec there resumes it)."""
OUTSIDE_THE_RUN = ("run.out_dir", "data.cache_dir", "log.", "jobs.")
"""Config keys (and sections) that do not change what a run computes: where it and its caches live, how it
reports, and the jobs that read its saved checkpoints."""


@dataclass
class Job:
    """One arm x seed run: what to launch and how to tell it is already finished."""

    name: str
    arm: str
    run_dir: Path
    overrides: list[str]
    config: Config

    @property
    def steps(self) -> int:
        return self.config.train.steps

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
            jobs.append(Job(name, arm, out / "runs" / name, overrides, load_config(spec.base, overrides)))
    return jobs


def refuse_changed_runs(jobs: list[Job]) -> None:
    """A run already under --out was trained as the spec now plans it: its saved config equals the job's, but for
    OUTSIDE_THE_RUN and a precision `auto` resolved. Otherwise skipping or resuming it would answer the changed
    spec's question with the old spec's run (a changed arm, a changed claim's arm set)."""
    for job in jobs:
        saved_path = job.run_dir / run_files.CONFIG
        if not saved_path.is_file():
            continue
        saved = _run_defining(yaml.safe_load(saved_path.read_text()) or {})
        planned = _run_defining(yaml.safe_load(to_yaml(job.config)))
        if planned.get("train.precision") == "auto":  # the start-up resolved it on the machine that ran
            del planned["train.precision"]
            saved.pop("train.precision", None)
        changed = sorted(k for k in saved.keys() | planned.keys() if saved.get(k) != planned.get(k))
        if changed:
            shown = "; ".join(f"{k}: ran {saved.get(k)!r}, planned {planned.get(k)!r}" for k in changed[:4])
            raise ExperimentError(
                f"{job.run_dir} was trained with another config than the spec now plans for arm {job.arm!r} "
                f"({shown}{'; ...' if len(changed) > 4 else ''}); its results would answer the changed spec. "
                "Run the changed spec into a new --out (the old runs stay where they are)")


def _run_defining(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flatten(config).items() if not k.startswith(OUTSIDE_THE_RUN)}


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


def _made_before_the_marker(out: Path) -> bool:
    """An experiment folder the spec runner wrote before it marked its folders: runs/, logs/ and its reports."""
    entries = [p.name for p in out.iterdir()] if out.is_dir() else []
    return "runs" in entries and all(e in ("runs", "logs") or e.endswith((".md", ".png")) for e in entries)


def run(spec_path: Path, out: Path, arms: Optional[list[str]], seeds: Optional[list[int]], extra: tuple[str, ...],
        dry_run: bool) -> int:
    """Plan, run the unfinished jobs (or print them) and write compare.md; the exit code."""
    spec = load_spec(spec_path)
    jobs = plan(spec, out, arms, seeds, extra)
    if not _made_before_the_marker(out):
        check_output_folder(out, MARKER)
    refuse_changed_runs(jobs)
    if dry_run:
        for job in jobs:
            print(("# complete, skipped: " if job.is_complete() else "") + shlex.join(job.command(spec)))
        return 0
    claim_output_folder(out, MARKER)
    run_jobs(jobs, spec, out)
    report = compare.compare([job.run_dir for job in jobs], out, names=[job.arm for job in jobs],
                             protocol=spec.protocol)
    print(report.read_text())
    return 0


KINDS.add("arms", Kind(run=lambda args: run(args.spec, args.out.resolve(), args.arms, args.seeds,
                                               tuple(args.overrides), args.dry_run),
                       options=("seeds", "arms", "dry_run", "overrides"),
                       doc="every arm of a base config trained with every seed, then compare.md "
                           "(configs/experiments/jreg_cpu.yaml)"))
