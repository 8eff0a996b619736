"""The trajectory sections of compare.md (docs/methods.md §4), added by experiments.compare when the runs have them.

- MDS: each group's final mean directional similarity (traj/<group>/mds of the parameter trajectory,
  traj/<group>/mds_update of the updates) per arm over seeds, and against the baseline arm with Welch intervals;
  lower MDS is more exploration. traj.png: the MDS averaged over groups along training, with seed bands.
- Subset training after t0 (train.trainable.mode norms_only or random): each such arm's final val loss minus
  that of the full-training arm it differs from only in train.trainable, paired by seed, beside the gap left by
  stopping at t0 (the full run's val loss at t0, where every arm is still identical to it). subset.png: the gaps
  against t0, beside the full run's MDS along training.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Iterable, Optional

from experiments import runs as cr
from experiments import stats

KINDS = {"mds": "parameter", "mds_update": "update"}
"""traj/<group>/<kind> -> which trajectory its MDS is of."""
ALL_GROUPS = "all groups (mean)"
MODE_KEY, T0_KEY = "train.trainable.mode", "train.trainable.after_step"


def groups(runs: Iterable[cr.Run], kind: str) -> list[str]:
    """The groups with a logged traj/<group>/<kind>, in order of first appearance."""
    found: dict[str, None] = {}
    for run in runs:
        for rec in run.records:
            for key in rec:
                parts = key.split("/")
                if len(parts) == 3 and parts[0] == "traj" and parts[2] == kind:
                    found.setdefault(parts[1], None)
    return list(found)


def mean_over_groups(record: dict[str, Any], kind: str) -> float:
    """The mean of a record's finite traj/*/<kind> values (nan when it has none)."""
    values = [float(v) for k, v in record.items()
              if k.startswith("traj/") and k.endswith(f"/{kind}") and k.count("/") == 2 and math.isfinite(v)]
    return statistics.fmean(values) if values else math.nan


def mds_curve(run: cr.Run, kind: str) -> dict[int, float]:
    """step -> the MDS averaged over groups, at every step the sketch logged."""
    out = {}
    for rec in run.records:
        value = mean_over_groups(rec, kind)
        if math.isfinite(value):
            out[int(rec["step"])] = value
    return out


def final_mds(runs: list[cr.Run], kind: str, group: str) -> list[float]:
    """Each run's final MDS of `group` (ALL_GROUPS: the mean over its groups)."""
    if group == ALL_GROUPS:
        return [mean_over_groups({f"traj/{g}/{kind}": cr.last_value(r.records, f"traj/{g}/{kind}")
                                  for g in groups([r], kind)}, kind) for r in runs]
    return [cr.last_value(r.records, f"traj/{group}/{kind}") for r in runs]


def mds_lines(arms: dict[str, list[cr.Run]], baseline: Optional[str]) -> list[str]:
    """Markdown: per kind, final MDS per group and arm; against the baseline, differences and a tally."""
    runs = [r for rs in arms.values() for r in rs]
    if not groups(runs, "mds"):
        return []
    lines = ["", "## Trajectory: mean directional similarity (MDS)", "",
             "Final MDS of each group's trajectory (mean ± 95% t interval over seeds): 1 is a straight line, ~0 "
             "orthogonal moves; lower MDS is more exploration (docs/methods.md §4)."]
    for kind, what in KINDS.items():
        rows = [ALL_GROUPS, *groups(runs, kind)]
        lines += ["", f"### MDS of the {what} trajectory", "", "| group | " + " | ".join(arms) + " |",
                  "|---" * (len(arms) + 1) + "|"]
        for g in rows:
            lines.append(f"| {g} | " + " | ".join(cr.fmt(stats.mean_std(final_mds(rs, kind, g))) for rs in arms.values())
                         + " |")
        if baseline is not None and baseline in arms:
            lines += _against(arms, baseline, kind, rows)
    return lines


def _against(arms: dict[str, list[cr.Run]], baseline: str, kind: str, rows: list[str]) -> list[str]:
    others = [a for a in arms if a != baseline]
    diffs = {a: {g: stats.welch(final_mds(arms[a], kind, g), final_mds(arms[baseline], kind, g)) for g in rows}
             for a in others}
    lines = ["", f"{KINDS[kind].capitalize()} MDS, arm − {baseline} [95% Welch interval], p:", "",
             "| group | " + " | ".join(others) + " |", "|---" * (len(others) + 1) + "|"]
    for g in rows:
        lines.append(f"| {g} | " + " | ".join(cr.fmt_diff(diffs[a][g]) for a in others) + " |")
    lines.append("")
    for a in others:
        per_group = [d for g, d in diffs[a].items() if g != ALL_GROUPS and d is not None]
        lower = sum(d.diff < 0 for d in per_group)
        clearly = sum(d.diff < 0 and not d.within_noise for d in per_group)
        higher = sum(d.diff > 0 and not d.within_noise for d in per_group)
        lines.append(f"- {a}: lower than {baseline} in {lower} of {len(per_group)} groups ({clearly} beyond noise; "
                     f"{higher} higher beyond noise)")
    return lines


def _trainable(run: cr.Run) -> tuple[str, int]:
    flat = cr.flatten(run.config)
    return str(flat.get(MODE_KEY, "all")), int(flat.get(T0_KEY, 0))


def _without_trainable(run: cr.Run) -> dict[str, Any]:
    return {k: v for k, v in cr.arm_config(run.config).items() if not k.startswith("train.trainable.")}


def full_arm(arms: dict[str, list[cr.Run]], label: str) -> Optional[str]:
    """The full-training arm that `label` differs from only in train.trainable (None when there is none)."""
    reference = _without_trainable(arms[label][0])
    return next((a for a, rs in arms.items() if _trainable(rs[0])[0] == "all" and _without_trainable(rs[0]) == reference),
                None)


def subset_gaps(subset: list[cr.Run], full: list[cr.Run], t0: int) -> tuple[list[float], list[float]]:
    """Paired by seed: (final val loss of the subset run - the full run's, the full run's val loss at t0 - its
    final one); nan where the full run has no validation at t0."""
    by_seed = {r.seed: r for r in full}
    gaps, stops = [], []
    for run in subset:
        ref = by_seed.get(run.seed)
        if ref is None:
            continue
        end = cr.last_value(ref.records, "val/loss")
        gaps.append(cr.last_value(run.records, "val/loss") - end)
        stops.append(cr.curve(ref.records, "val/loss").get(t0, math.nan) - end)
    return gaps, stops


def subset_rows(arms: dict[str, list[cr.Run]]) -> list[dict[str, Any]]:
    """One row per subset arm: label, mode, t0, its full arm and the paired gaps."""
    rows = []
    for label, runs in arms.items():
        mode, t0 = _trainable(runs[0])
        full = full_arm(arms, label) if mode != "all" else None
        if full is not None:
            gaps, stops = subset_gaps(runs, arms[full], t0)
            rows.append(dict(label=label, mode=mode, t0=t0, full=full, gaps=gaps, stops=stops))
    return sorted(rows, key=lambda r: (r["mode"], r["t0"]))


def subset_lines(arms: dict[str, list[cr.Run]]) -> list[str]:
    rows = subset_rows(arms)
    if not rows:
        return []
    lines = ["", "## Subset training after t0", "",
             "Final val loss minus full training's, paired by seed: mean [95% t interval], one-sample t-test p; "
             "\"stop at t0\" is the full run's val loss at t0 minus its final one (training nothing after t0). "
             "The last column is subset − stop: negative when training the subset beats stopping.", "",
             "| arm | trains after t0 | t0 | pairs | gap to full | stop at t0 | subset − stop |", "|---" * 7 + "|"]
    for r in rows:
        over_stop = [g - s for g, s in zip(r["gaps"], r["stops"])]
        lines.append(f"| {r['label']} | {r['mode']} | {r['t0']} | {len(r['gaps'])} | {cr.fmt_diff(stats.paired(r['gaps']))} | "
                     f"{cr.fmt_diff(stats.paired(r['stops']))} | {cr.fmt_diff(stats.paired(over_stop))} |")
    return lines


def lines(arms: dict[str, list[cr.Run]], baseline: Optional[str]) -> list[str]:
    """Every trajectory section the runs have data for (none: [])."""
    return mds_lines(arms, baseline) + subset_lines(arms)


def plot(arms: dict[str, list[cr.Run]], out: Path) -> list[Path]:
    """traj.png when MDS was logged; subset.png when there are subset arms."""
    plt = cr.pyplot()
    paths = []
    runs = [r for rs in arms.values() for r in rs]
    if groups(runs, "mds"):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, (kind, what) in zip(axes, KINDS.items()):
            for label, rs in arms.items():
                _band(ax, [mds_curve(r, kind) for r in rs], f"{label} (n={len(rs)})")
            cr.decorate(ax, f"MDS of the {what} trajectory (mean over groups, 95% CI)", "step", "MDS so far")
        paths.append(out / "traj.png")
        cr.save_figure(fig, paths[-1])
    rows = subset_rows(arms)
    if rows:
        fig, (gap_ax, mds_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
        for mode in sorted({r["mode"] for r in rows}):
            _errorbars(gap_ax, [(r["t0"], r["gaps"]) for r in rows if r["mode"] == mode], mode)
        _errorbars(gap_ax, sorted({(r["t0"], tuple(r["stops"])) for r in rows}), "stop at t0")
        gap_ax.axhline(0.0, color="black", lw=0.8)
        cr.decorate(gap_ax, "Final val loss minus full training's (paired, 95% CI)", "t0", "val loss gap")
        full = arms[rows[0]["full"]]
        for kind, what in KINDS.items():
            _band(mds_ax, [mds_curve(r, kind) for r in full], f"{rows[0]['full']}: {what} MDS")
        for t0 in sorted({r["t0"] for r in rows}):
            mds_ax.axvline(t0, color="grey", ls="--", lw=0.8)
        cr.decorate(mds_ax, "Full training's MDS (mean over groups, 95% CI); dashed: t0", "step", "MDS so far")
        paths.append(out / "subset.png")
        cr.save_figure(fig, paths[-1])
    return paths


def _band(ax, curves: list[dict[int, float]], label: str) -> None:
    steps, mean, half = cr.band_of(curves)
    if steps:
        line, = ax.plot(steps, mean, label=label)
        ax.fill_between(steps, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)],
                        color=line.get_color(), alpha=0.2)


def _errorbars(ax, points: list[tuple[int, Iterable[float]]], label: str) -> None:
    summaries = [(t0, stats.mean_std(values)) for t0, values in points]
    summaries = [(t0, s) for t0, s in summaries if s[2]]
    if summaries:
        ax.errorbar([t0 for t0, _ in summaries], [m for _, (m, _, _) in summaries],
                    yerr=[0.0 if n < 2 else stats.ci_halfwidth(s, n) for _, (_, s, n) in summaries],
                    marker="o", capsize=3, label=label)
