#!/usr/bin/env python
"""Run an experiment spec (arms x seeds, one `python -m launch` each, in turn), then compare the runs.

    python scripts/run_experiment.py configs/experiments/jreg_vs_baseline.yaml --out runs/jreg_vs_baseline
    python scripts/run_experiment.py SPEC.yaml --out DIR --dry-run                 # print the plan
    python scripts/run_experiment.py SPEC.yaml --out DIR --arms baseline --seeds 0,1 train.steps=100

Spec (YAML): `base` config (relative to the repository root), `ranks`, `seeds`, shared `overrides` and
`arms` (name -> overrides), each overrides a mapping of config key -> value. Runs go to DIR/runs/<arm>-s<seed>
with launcher logs in DIR/logs/; a run whose checkpoints/latest is already at the final step is skipped and
an unfinished one resumes (train.resume: auto), so an interrupted experiment is continued by rerunning it.
Extra `key=value` arguments apply to every run, after the spec's. compare_runs.py writes into DIR at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import compare_runs  # noqa: E402
from model import folders  # noqa: E402
from pretrain.config import load_config  # noqa: E402

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
        return [sys.executable, "-m", "launch", "--num_gpus", str(spec.ranks), str(spec.base), *self.overrides]

    def is_complete(self) -> bool:
        """checkpoints/latest names a complete checkpoint at the final step."""
        try:
            ckpt = folders.latest(self.run_dir / "checkpoints")
        except folders.CheckpointError:
            return False
        return ckpt is not None and folders.verify(ckpt)["step"] >= self.steps


def to_overrides(mapping: Optional[dict[str, Any]], where: str) -> list[str]:
    """{key: value} -> ['key=value'], lists and mappings in JSON flow form (which the dotlist parser reads)."""
    if mapping is None:
        return []
    if not isinstance(mapping, dict):
        raise ValueError(f"{where} must be a mapping of config key -> value, got {mapping!r}")
    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in mapping.items()]


def load_spec(path: Path) -> Spec:
    """Read and check an experiment spec; errors name the file and the offending key."""
    if not path.is_file():
        raise FileNotFoundError(f"experiment spec {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} (valid: {sorted(SPEC_KEYS)})")
    if not raw.get("arms") or not isinstance(raw["arms"], dict):
        raise ValueError(f"{path}: `arms` must map at least one arm name to its overrides")
    base = ROOT / raw.get("base", "configs/tiny.yaml")
    if not base.is_file():
        raise FileNotFoundError(f"{path}: base config {base} does not exist")
    return Spec(base=base, ranks=int(raw.get("ranks", 2)), seeds=[int(s) for s in raw.get("seeds", [0])],
                overrides=to_overrides(raw.get("overrides"), f"{path}: overrides"),
                arms={name: to_overrides(o, f"{path}: arms.{name}") for name, o in raw["arms"].items()})


def plan(spec: Spec, out: Path, arms: Optional[list[str]] = None, seeds: Optional[list[int]] = None,
         extra: tuple[str, ...] = ()) -> list[Job]:
    """Every selected arm x seed as a Job, arm-major; each config is validated here, before anything runs."""
    unknown = set(arms or []) - set(spec.arms)
    if unknown:
        raise ValueError(f"unknown arm(s) {sorted(unknown)}; the spec has {list(spec.arms)}")
    jobs = []
    for arm in arms or spec.arms:
        for seed in spec.seeds if seeds is None else seeds:
            name = compare_runs.run_dir_name(arm, seed)
            overrides = [f"run.out_dir={out / 'runs'}", f"run.name={name}", f"run.seed={seed}",
                         *spec.overrides, *spec.arms[arm], *extra]
            steps = load_config(spec.base, overrides).train.steps
            jobs.append(Job(name, arm, out / "runs" / name, overrides, steps))
    return jobs


def run_jobs(jobs: list[Job], spec: Spec, out: Path) -> None:
    """Launch the unfinished jobs one after another; stops at the first failure, naming its log."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for i, job in enumerate(jobs, start=1):
        if job.is_complete():
            print(f"[{i}/{len(jobs)}] {job.name}: complete, skipped", flush=True)
            continue
        log = out / "logs" / f"{job.name}.log"
        start = time.perf_counter()
        with open(log, "a") as f:
            rc = subprocess.call(job.command(spec), cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        if rc != 0 or not job.is_complete():
            raise RuntimeError(f"{job.name} failed (exit {rc}); see {log}")
        print(f"[{i}/{len(jobs)}] {job.name}: done in {time.perf_counter() - start:.0f}s", flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", type=Path, help="experiment spec YAML (e.g. configs/experiments/jreg_vs_baseline.yaml)")
    p.add_argument("--out", type=Path, required=True, help="experiment folder: runs/, logs/, compare.md, PNGs")
    p.add_argument("--dry-run", action="store_true", help="print the launch commands (and skips) and exit")
    p.add_argument("--arms", help="comma-separated arm names to run (default: all)")
    p.add_argument("--seeds", help="comma-separated seeds to run (default: the spec's)")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    args = p.parse_intermixed_args(argv)  # overrides may follow the options
    out = args.out.resolve()
    try:
        spec = load_spec(args.spec)
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        jobs = plan(spec, out, args.arms.split(",") if args.arms else None, seeds, tuple(args.overrides))
    except (FileNotFoundError, ValueError) as err:  # ConfigError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for job in jobs:
            print(("# complete, skipped: " if job.is_complete() else "") + shlex.join(job.command(spec)))
        return 0
    try:
        run_jobs(jobs, spec, out)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    report = compare_runs.compare([job.run_dir for job in jobs], out, names=[job.arm for job in jobs])
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
