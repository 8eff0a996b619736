"""Compare training runs arm by arm (e.g. JREG vs baseline): a Markdown table over seeds and plots.

    python scripts/compare_runs.py runs/baseline-s0 runs/baseline-s1 runs/jreg-s0 runs/jreg-s1 --out /tmp/cmp

Runs whose resolved configs are equal except for the seed, name and output paths form one arm; an arm is
labelled by its regularizers ("baseline", "jreg final w=0.1"), plus the config keys that tell apart arms
that would otherwise share a label, or by `--label-by KEY,...`; `--arm-from-dir` names them as the spec
runner did (its run directories are <arm>-s<seed>). Writes <out>/compare.md (final val loss, zeta_L,
zeta_(L-1), Psi_(L-1), Psi_L, mean middle-layer Psi and any eval/<task>/<metric>: mean and 95% t interval over
seeds; against the baseline arm, each difference with its 95% Welch interval and Welch t-test p-value, marked
"within noise" when p >= 0.05) and loss.png, zeta.png (zeta_L, its signed form, zeta_(L-1)), profile.png
(mean over seeds, band = the 95% interval), plus the trajectory sections when the runs have them.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Optional

from experiments import trajectory
from experiments.errors import ExperimentError
from experiments.runs import (
    TOP_RISE,
    Run,
    arm_names_from_dirs,
    final_values,
    fmt,
    fmt_diff,
    group_runs,
    load_run,
    plot_all,
    summarize,
)
from experiments.stats import welch
from model.errors import user_errors
from storage.io import atomic_write_text, check_output_folder, claim_output_folder

MARKER = ".growlm-compare"
"""Marks an --out folder compare made (re-running it there replaces its files)."""


def render_markdown(arms: dict[str, list[Run]], baseline: Optional[str] = None) -> str:
    """compare.md: the main table (one row per arm), the downstream eval table when logged, and each arm's
    difference from the baseline arm with its interval and Welch p-value."""
    summary = summarize(arms)
    lines = ["# Run comparison", "",
             "Mean ± half-width of the 95% t confidence interval over seeds of each run's last logged value; "
             "middle Psi = mean of Psi_2..Psi_{L-1} of the last jump profile; zeta_(L-1) = 100 (max(0, Psi_(L-1) - "
             "Psi_(L-2)) + max(0, Psi_L - Psi_(L-1))), the rise over the top two layers.", "",
             "| arm | seeds | final step | val loss | zeta_L | middle Psi | zeta_(L-1) | Psi_(L-1) | Psi_L |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, runs in arms.items():
        s = summary[label]
        seeds = ", ".join(str(r.seed) for r in runs)
        lines.append(f"| {label} | {len(runs)} ({seeds}) | {fmt(s['final step'], 0)} | {fmt(s['val/loss'])} | "
                     f"{fmt(s['zeta_L'], 3)} | {fmt(s['middle Psi'])} | {fmt(s[TOP_RISE], 3)} | "
                     f"{fmt(s['Psi_(L-1)'])} | {fmt(s['Psi_L'])} |")
    evals = sorted({k for s in summary.values() for k in s if k.startswith("eval/")})
    if evals:
        lines += ["", "## Downstream", "", "| arm | " + " | ".join(evals) + " |", "|---" * (len(evals) + 1) + "|"]
        for label in arms:
            cells = [fmt(summary[label].get(k, (math.nan, math.nan, 0))) for k in evals]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if baseline is not None:
        lines += differences(arms, baseline)
    lines += trajectory.lines(arms, baseline)
    lines += ["", "## Runs", ""]
    lines += [f"- {label}: " + ", ".join(str(r.path) for r in runs) for label, runs in arms.items()]
    return "\n".join(lines) + "\n"


def differences(arms: dict[str, list[Run]], baseline: str) -> list[str]:
    """Markdown lines: per arm and metric, arm - baseline [95% Welch interval], p, and whether that is noise."""
    values = final_values(arms)
    metrics = [k for k in values[baseline] if k != "final step"]
    lines = ["", f"## Against {baseline}", "",
             f"arm − {baseline}: difference of means [95% Welch interval], Welch t-test p-value; \"within noise\" "
             "when p ≥ 0.05 (the interval contains 0).", "",
             "| arm | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for label in arms:
        if label != baseline:
            cells = [fmt_diff(welch(values[label].get(k, []), values[baseline][k])) for k in metrics]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def compare(run_dirs: list[Path], out: Path, label_by: Optional[list[str]] = None,
            baseline: Optional[str] = None, names: Optional[list[str]] = None) -> Path:
    """Load, group, write compare.md and the plots into `out`; returns compare.md's path. The baseline arm
    (default: the one labelled "baseline", if any) is what the differences are taken against; `names` gives
    each run directory's arm name (else arms are told apart by their configs)."""
    return write_report(load_arms(run_dirs, label_by, names), out, baseline)


def load_arms(run_dirs: list[Path], label_by: Optional[list[str]] = None,
              names: Optional[list[str]] = None) -> dict[str, list[Run]]:
    runs = [load_run(d) for d in run_dirs]
    return group_runs(runs, label_by, None if names is None else {r.path: n for r, n in zip(runs, names)})


def resolve_baseline(arms: dict[str, list[Run]], baseline: Optional[str]) -> Optional[str]:
    """The arm differences are taken against: `baseline` (which must be an arm), else the arm "baseline"."""
    if baseline is not None and baseline not in arms:
        raise ExperimentError(f"--baseline {baseline!r} is not an arm; arms: {sorted(arms)}")
    return baseline if baseline is not None or "baseline" not in arms else "baseline"


def write_report(arms: dict[str, list[Run]], out: Path, baseline: Optional[str] = None) -> Path:
    baseline = resolve_baseline(arms, baseline)
    out.mkdir(parents=True, exist_ok=True)
    report = out / "compare.md"
    atomic_write_text(report, render_markdown(arms, baseline))
    plot_all(arms, out)
    trajectory.plot(arms, out)
    return report


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories (each with config.yaml and metrics.jsonl)")
    p.add_argument("--out", type=Path, required=True, help="folder for compare.md and the PNGs")
    p.add_argument("--label-by", help="comma-separated config keys to label arms by, e.g. train.lr")
    p.add_argument("--baseline", help="the arm differences are taken against (default: the arm 'baseline')")
    p.add_argument("--arm-from-dir", action="store_true",
                   help="name arms by their run directories, <arm>-s<seed> (the spec runner's runs), not configs")
    args = p.parse_args(argv)
    return user_errors(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out, MARKER)  # before reading the runs: a refused --out costs nothing
    names = arm_names_from_dirs(args.runs) if args.arm_from_dir else None
    arms = load_arms(args.runs, args.label_by.split(",") if args.label_by else None, names)
    resolve_baseline(arms, args.baseline)
    report = write_report(arms, claim_output_folder(args.out, MARKER), args.baseline)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
