#!/usr/bin/env python
"""AdamW, SGD and Muon side by side on one config: tokens/s and validation loss at a fixed step, over seeds.

Each (optimizer, seed) is a real training run through `python -m launch`, all on this machine, in interleaved
rounds: round r runs every optimizer with seed r, in an order that rotates each round, so machine noise and
drift land on each alike. Per run: tokens/s is the median of its logged windows after the first (which holds
start-up and, for Muon, the one-off torch.compile of its Newton-Schulz kernels); the validation loss is the one
at the last step (eval.every = train.steps). Per optimizer: the mean over seeds with its 95% t-interval
(experiments/stats.py), then each optimizer's difference from AdamW (Welch). Intervals that overlap, or a
difference whose interval holds 0, show no difference at this budget; and the settings below are starting points,
not tuned per optimizer, so a loss gap ranks these settings, not the optimizers.

    python -m bench.optimizers                                  # tiny config, 3 seeds, 100 steps
    python -m bench.optimizers --steps 300 --seeds 5 train.precision=fp32
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from experiments.stats import mean_ci, welch
from launch.command import launch_argv
from pretrain.cpu import cpu_name
from storage import run_files

ROOT = Path(__file__).resolve().parent.parent
OPTIMIZERS = {
    "adamw": ["train.optimizer=adamw"],
    "sgd": ["train.optimizer=sgd", "train.lr=0.3", "train.momentum=0.9", "train.weight_decay=0"],
    "muon": ["train.optimizer=muon", "train.muon_lr=0.02", "train.momentum=0.95", "train.grad_clip=0"],
}
"""Each optimizer's settings over the config's (AdamW: the config's own; SGD: an lr measured not to diverge on
the tiny config, no L2; Muon: its usual lr and momentum, no clipping, which growlm refuses for Muon)."""


def run(config: str, name: str, seed: int, out: Path, steps: int, ranks: int, overrides: list[str]) -> dict:
    """One training run; its median tokens/s after the first logged window and its final validation loss."""
    run_dir = out / f"{name}-seed{seed}"
    argv = launch_argv(config, [*overrides, *OPTIMIZERS[name], f"run.seed={seed}", f"train.steps={steps}",
                                f"eval.every={steps}", "checkpoint.every=0", "log.tensorboard=false",
                                "log.progress=none", f"run.out_dir={out}", f"run.name={run_dir.name}"], ranks)
    with open(out / f"{run_dir.name}.log", "w") as log:
        subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    records = run_files.metrics(run_dir)
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]
    val = [r["val/loss"] for r in records if r.get("step") == steps and "val/loss" in r]
    return {"tokens_per_s": statistics.median(speeds), "val_loss": val[-1]}


def table(results: dict[str, list[dict]], steps: int) -> str:
    """Markdown: mean ± 95% t half-width per optimizer, and each one's Welch difference from AdamW."""
    lines = [f"| optimizer | tokens/s | val loss at step {steps} | val loss − AdamW [95% CI] | seeds |",
             "|---|---|---|---|---|"]
    for name, runs in results.items():
        speed, speed_hw, n = mean_ci(r["tokens_per_s"] for r in runs)
        loss, loss_hw, _ = mean_ci(r["val_loss"] for r in runs)
        diff = welch([r["val_loss"] for r in runs], [r["val_loss"] for r in results["adamw"]])
        versus = "—" if name == "adamw" or diff is None else f"{diff.diff:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]"
        lines.append(f"| {name} | {speed:,.0f} ± {speed_hw:,.0f} | {loss:.3f} ± {loss_hw:.3f} | {versus} | {n} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml", help="run config every optimizer trains")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per run; validation loss at the last")
    p.add_argument("--seeds", type=int, default=3, help="seeds (rounds) per optimizer")
    p.add_argument("--ranks", type=int, default=2, help="ranks per run (CPU ranks over gloo without a GPU)")
    p.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a new temporary one)")
    p.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.precision=fp32")
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="growlm-bench-optim-"))
    out.mkdir(parents=True, exist_ok=True)
    names = list(OPTIMIZERS)
    results: dict[str, list[dict]] = {name: [] for name in names}
    start = time.perf_counter()
    for seed in range(args.seeds):
        for name in names[seed % len(names):] + names[:seed % len(names)]:
            results[name].append(run(args.config, name, seed, out, args.steps, args.ranks, args.overrides))
            print(f"seed {seed} {name}: {results[name][-1]}", flush=True)
    print(f"\n{' '.join([args.config, *args.overrides])}, {args.steps} steps, {args.ranks} ranks, {cpu_name()} "
          f"({os.cpu_count()} logical CPUs); {time.perf_counter() - start:.0f} s; runs in {out}\n")
    print(table(results, args.steps))


if __name__ == "__main__":
    main()
