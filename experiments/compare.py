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

With `--spec SPEC` (and always when the spec runner writes it) arms are named by their run directories as the
spec names them, and a spec's pre-registered `protocol` (experiments/protocol.py) adds its tests first: each
directional claim by a one- or two-sided Welch t-test and each equivalence claim by TOST (paired by seed where
the claim says so), Holm-adjusted within each family, and the per-seed slopes; a run outside the seed plan is
tested nowhere and listed under "Exploratory (off-protocol)".
"""
from __future__ import annotations

import argparse
import difflib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from experiments import trajectory
from experiments.errors import ExperimentError
from experiments.protocol import PREDICTIONS, SLOPE_UNIT, Outcome, Protocol
from experiments.runs import (
    TOP_RISE,
    Run,
    arm_names_from_dirs,
    curve,
    final_point,
    final_values,
    fmt,
    fmt_diff,
    group_runs,
    load_run,
    plot_all,
    summarize,
    window_slope,
)
from experiments.spec import load_spec
from experiments.stats import LEVEL, Difference, finite, holm, mean_ci, paired, tost, tost_paired, welch
from settings.errors import user_errors
from storage.io import atomic_write_text, check_output_folder, claim_output_folder

MARKER = ".growlm-compare"
"""Marks an --out folder compare made (re-running it there replaces its files)."""


def render_markdown(arms: dict[str, list[Run]], baseline: Optional[str] = None, protocol: Optional[Protocol] = None,
                    off: Sequence[OffProtocol] = ()) -> str:
    """compare.md: a protocol's tests first, then the main table (one row per arm), the downstream eval table
    when logged, each arm's difference from the baseline arm with its interval and Welch p-value, and the runs
    outside the protocol's seed plan apart from all of them."""
    summary = summarize(arms)
    lines = ["# Run comparison", ""]
    if protocol is not None:
        lines += protocol_lines(arms, protocol)
        lines += ["", "## Descriptive (every run in the seed plan, every metric)", "",
                  "Two-sided, per metric and not adjusted for multiple comparisons: these describe the runs; the "
                  "claims are decided by the pre-registered tests above.", ""]
    lines += ["Mean ± half-width of the 95% t confidence interval over seeds of each run's last logged value; "
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
    if off:
        lines += exploratory_lines(off, protocol)
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


@dataclass(frozen=True)
class OffProtocol:
    """A run outside the protocol's seed plan, and why: shown, never tested."""

    arm: str
    run: Run
    reason: str


@dataclass(frozen=True)
class Comparison:
    """One pre-registered claim of one arm against the baseline: the seeds each side had, and its test."""

    arm: str
    outcome: Outcome
    seeds: tuple[int, int]
    result: Optional[Difference]

    @property
    def p(self) -> float:
        return math.nan if self.result is None else self.result.p


def outcome_values(runs: list[Run], outcome: Outcome) -> list[float]:
    """Each seed's value of an outcome: the metric's last logged value, or its slope over the window."""
    if outcome.window is None:
        return [final_point(r.records, outcome.metric) for r in runs]
    return [window_slope(r.records, outcome.metric, outcome.window, SLOPE_UNIT) for r in runs]


def claim_values(arm: list[Run], baseline: list[Run], outcome: Outcome) -> tuple[list[float], list[float]]:
    """(arm's, baseline's) values of an outcome; for a paired claim only the seeds both sides have, aligned."""
    if not outcome.paired:
        return outcome_values(arm, outcome), outcome_values(baseline, outcome)
    base = {r.seed: r for r in baseline}
    pairs = [(r, base[r.seed]) for r in arm if r.seed in base]
    return outcome_values([a for a, _ in pairs], outcome), outcome_values([b for _, b in pairs], outcome)


def comparisons(arms: dict[str, list[Run]], protocol: Protocol, outcomes: list[Outcome],
                test: Callable[[Outcome, list[float], list[float]], Optional[Difference]]) -> list[Comparison]:
    """Every (outcome, arm) claim of one family, in the order the spec declares them, with `test`'s result."""
    rows = []
    for outcome in outcomes:
        for arm in outcome.arms:
            values, base = claim_values(arms.get(arm, []), arms.get(protocol.baseline, []), outcome)
            rows.append(Comparison(arm, outcome, (len(finite(values)), len(finite(base))),
                                   test(outcome, values, base)))
    return rows


def directional_test(outcome: Outcome, arm: list[float], baseline: list[float], alpha: float) -> Optional[Difference]:
    """A predicted direction: Welch's t-test, or the paired t-test of arm − baseline by seed."""
    side = PREDICTIONS[outcome.predicts]
    if outcome.paired:
        return paired([a - b for a, b in zip(arm, baseline, strict=True)], 1 - alpha, side)
    return welch(arm, baseline, 1 - alpha, side)


def equivalence_test(outcome: Outcome, arm: list[float], baseline: list[float], alpha: float) -> Optional[Difference]:
    """Equivalence within the claim's margin: TOST by Welch tests, or by paired tests by seed."""
    return (tost_paired if outcome.paired else tost)(arm, baseline, outcome.margin, alpha)


def paired_note(outcome: Outcome) -> str:
    return " (paired)" if outcome.paired else ""


def protocol_lines(arms: dict[str, list[Run]], protocol: Protocol) -> list[str]:
    """The pre-registered tests: the directional and the equivalence family (each Holm-adjusted over all its
    claims) and the per-seed slopes."""
    alpha = protocol.alpha
    directional = comparisons(arms, protocol, protocol.directional, lambda o, a, b: directional_test(o, a, b, alpha))
    lines = ["## Pre-registered protocol", "",
             f"Fixed in the spec before the runs: baseline `{protocol.baseline}`, seeds "
             f"{', '.join(map(str, protocol.seeds))} in every arm, alpha = {alpha:g} per family. Only runs in this "
             "seed plan enter these tests. Intervals are not adjusted; p-values are Holm-adjusted over the whole "
             "family, a claim without data counting as p = 1.", "",
             "### Directional claims", "",
             f"arm − {protocol.baseline}: difference of means, its {1 - alpha:.0%} Welch interval (one-sided for a "
             "predicted lower or higher, two-sided for `differs`), the Welch t-test's p-value (one-sided likewise; "
             "a claim marked (paired): the mean difference by seed and the paired t-test) "
             f"and Holm's adjustment over the family ({len(directional)} directional claims); supported when the "
             f"adjusted p < {alpha:g}.", ""]
    lines += claim_table(directional, alpha, ("predicts", "p"), lambda o: str(o.predicts) + paired_note(o),
                         ("supported", "not shown"))
    if protocol.equivalence:
        equivalence = comparisons(arms, protocol, protocol.equivalence,
                                  lambda o, a, b: equivalence_test(o, a, b, alpha))
        lines += ["", "### Equivalence claims", "",
                  f"arm − {protocol.baseline} against ± the declared margin by two one-sided Welch tests (TOST; a "
                  "claim marked (paired): two one-sided paired t-tests on the differences by seed): the "
                  f"{1 - 2 * alpha:.0%} interval (equivalent at alpha exactly when it lies inside ± margin), "
                  f"the TOST p-value and Holm's adjustment over the family ({len(equivalence)} equivalence "
                  f"claims); equivalent when the adjusted p < {alpha:g}.", ""]
        lines += claim_table(equivalence, alpha, ("margin", "TOST p"), lambda o: f"± {o.margin:g}" + paired_note(o),
                             ("equivalent", "not shown equivalent"))
    if protocol.slopes:
        lines += slope_lines(arms, protocol)
    return lines


def claim_table(rows: list[Comparison], alpha: float, columns: tuple[str, str], claim: Callable[[Outcome], str],
                verdicts: tuple[str, str]) -> list[str]:
    """One family's table: `columns` names the claim's and the p-value's column, `claim` fills the former and
    `verdicts` reads a Holm-adjusted p below alpha, and not."""
    lines = [f"| arm | outcome | {columns[0]} | seeds (arm, baseline) | arm − baseline | interval | {columns[1]} | "
             "Holm p | verdict |", "|---" * 9 + "|"]
    for row, adjusted in zip(rows, holm([r.p for r in rows])):
        if row.result is None or math.isnan(row.p):
            outcome = f"{verdicts[1]} (no test)"
        else:
            outcome = verdicts[0] if adjusted < alpha else verdicts[1]
        lines.append(f"| {row.arm} | {row.outcome.label} | {claim(row.outcome)} | {row.seeds[0]}, {row.seeds[1]} | "
                     f"{result_cells(row.result)} | {adjusted:.3g} | {outcome} |")
    return lines


def result_cells(d: Optional[Difference]) -> str:
    """'difference | interval | p' cells; a one-sided interval's open side reads ±inf."""
    if d is None:
        return "n/a | n/a | n/a (< 2 seeds)"
    return f"{d.diff:+.4f} | [{d.low:+.4f}, {d.high:+.4f}] | {d.p:.3g}"


def slope_lines(arms: dict[str, list[Run]], protocol: Protocol) -> list[str]:
    """Each slope outcome per arm: the mean of the per-seed slopes with its t interval over seeds."""
    lines = ["", "### Slopes", "",
             "Per seed, the least-squares slope of the metric against step over the declared window; per arm, the "
             f"mean over seeds with its {LEVEL:.0%} t interval. Each arm − baseline difference is tested in the "
             "directional table.", "",
             f"| outcome | arm | seeds | mean slope [{LEVEL:.0%} interval] |", "|---|---|---|---|"]
    for outcome in protocol.slopes:
        for arm in (protocol.baseline, *outcome.arms):
            mean, half, n = mean_ci(outcome_values(arms.get(arm, []), outcome))
            cell = f"{mean:+.4f}" + (f" [{mean - half:+.4f}, {mean + half:+.4f}]" if n > 1 else "")
            lines.append(f"| {outcome.label} | {arm} | {n} | {'n/a' if n == 0 else cell} |")
    return lines


def exploratory_lines(off: Sequence[OffProtocol], protocol: Protocol) -> list[str]:
    """The off-protocol runs, one row each with its outcomes: set apart so that none can change a tested claim."""
    outcomes = [*protocol.primary, *protocol.slopes]
    lines = ["", "## Exploratory (off-protocol)", "",
             "Runs outside the spec's seed plan (a seed not in its `seeds`, or an arm not in the spec): exploratory "
             "only, left out of every test, interval and plot above.", "",
             "| arm | seed | why off-protocol | " + " | ".join(o.label for o in outcomes) + " | run |",
             "|---" * (len(outcomes) + 4) + "|"]
    for item in off:
        values = [outcome_values([item.run], o)[0] for o in outcomes]
        cells = ["n/a" if math.isnan(v) else f"{v:.4f}" for v in values]
        lines.append(f"| {item.arm} | {item.run.seed} | {item.reason} | " + " | ".join(cells) + f" | {item.run.path} |")
    return lines


def split_off_protocol(arms: dict[str, list[Run]],
                       protocol: Protocol) -> tuple[dict[str, list[Run]], list[OffProtocol]]:
    """(the runs in the protocol's seed plan, by arm; the rest, each with the reason it is outside)."""
    on: dict[str, list[Run]] = {}
    off = []
    for arm, runs in arms.items():
        for run in runs:
            reason = protocol.off_protocol(arm, run.seed)
            if reason is None:
                on.setdefault(arm, []).append(run)
            else:
                off.append(OffProtocol(arm, run, reason))
    return on, off


def compare(run_dirs: list[Path], out: Path, label_by: Optional[list[str]] = None,
            baseline: Optional[str] = None, names: Optional[list[str]] = None,
            protocol: Optional[Protocol] = None) -> Path:
    """Load, group, write compare.md and the plots into `out`; returns compare.md's path. The baseline arm
    (default: the one labelled "baseline", if any) is what the differences are taken against; `names` gives
    each run directory's arm name (else arms are told apart by their configs); a spec's `protocol` adds its
    tests and names the baseline."""
    return write_report(load_arms(run_dirs, label_by, names), out, baseline, protocol)


def load_arms(run_dirs: list[Path], label_by: Optional[list[str]] = None,
              names: Optional[list[str]] = None) -> dict[str, list[Run]]:
    """The runs grouped into arms; a run directory named twice (under any spelling) is refused, since it would
    count as two seeds."""
    resolved = [Path(d).resolve() for d in run_dirs]
    repeated = sorted({str(d) for d, r in zip(run_dirs, resolved) if resolved.count(r) > 1})
    if repeated:
        raise ExperimentError(f"run directories {repeated} are given more than once: one run would count as two seeds")
    runs = [load_run(d) for d in run_dirs]
    return group_runs(runs, label_by, None if names is None else {r.path: n for r, n in zip(runs, names)})


def resolve_baseline(arms: dict[str, list[Run]], baseline: Optional[str]) -> Optional[str]:
    """The arm differences are taken against: `baseline` (which must be an arm), else the arm "baseline"."""
    if baseline is not None and baseline not in arms:
        raise ExperimentError(f"--baseline {baseline!r} is not an arm; arms: {sorted(arms)}")
    return baseline if baseline is not None or "baseline" not in arms else "baseline"


def write_report(arms: dict[str, list[Run]], out: Path, baseline: Optional[str] = None,
                 protocol: Optional[Protocol] = None) -> Path:
    """compare.md and the plots; under a protocol only the runs in its seed plan are tabulated and plotted,
    against its baseline."""
    off: list[OffProtocol] = []
    if protocol is None:
        baseline = resolve_baseline(arms, baseline)
    else:
        arms, off = split_off_protocol(arms, protocol)
        baseline = protocol.baseline if protocol.baseline in arms else None
        refuse_unlogged_metrics(arms, protocol)
    out.mkdir(parents=True, exist_ok=True)
    report = out / "compare.md"
    atomic_write_text(report, render_markdown(arms, baseline, protocol, off))
    plot_all(arms, out)
    trajectory.plot(arms, out)
    return report


def refuse_unlogged_metrics(arms: dict[str, list[Run]], protocol: Protocol) -> None:
    """A claim on a metric no run logged would read "no test" forever (a misspelt key, or one the runs' config does
    not log): refused before compare.md is written, naming the logged keys closest to it."""
    runs = [r for group in arms.values() for r in group]
    logged = sorted({key for r in runs for record in r.records for key in record})
    for outcome in (*protocol.primary, *protocol.slopes):
        if runs and not any(curve(r.records, outcome.metric) for r in runs):
            close = difflib.get_close_matches(outcome.metric, logged, n=3, cutoff=0.5)
            hint = f"closest logged keys: {', '.join(close)}" if close else f"logged keys: {', '.join(logged[:20])}"
            raise ExperimentError(f"protocol metric {outcome.metric!r} is logged by none of the {len(runs)} runs "
                                  f"({hint}); fix the key in the spec's protocol and rerun: finished runs are kept")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories (each with config.yaml and metrics.jsonl)")
    p.add_argument("--out", type=Path, required=True, help="folder for compare.md and the PNGs")
    p.add_argument("--label-by", help="comma-separated config keys to label arms by, e.g. train.lr")
    p.add_argument("--baseline", help="the arm differences are taken against (default: the arm 'baseline')")
    p.add_argument("--arm-from-dir", action="store_true",
                   help="name arms by their run directories, <arm>-s<seed> (the spec runner's runs), not configs")
    p.add_argument("--spec", type=Path,
                   help="the experiment spec the runs come from: arms named as --arm-from-dir, and its protocol's "
                        "tests, baseline and seed plan (runs outside it are listed as exploratory)")
    args = p.parse_args(argv)
    return user_errors(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out, MARKER)  # before reading the runs: a refused --out costs nothing
    spec = load_spec(args.spec) if args.spec else None
    if spec is not None and (args.label_by or args.baseline):
        raise ExperimentError(f"--spec {args.spec} names the arms (by run directory) and its protocol the baseline: "
                              "leave out --label-by and --baseline")
    names = arm_names_from_dirs(args.runs) if args.arm_from_dir or spec is not None else None
    arms = load_arms(args.runs, args.label_by.split(",") if args.label_by else None, names)
    protocol = None if spec is None else spec.protocol
    if protocol is None:
        resolve_baseline(arms, args.baseline)
    report = write_report(arms, claim_output_folder(args.out, MARKER), args.baseline, protocol)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
