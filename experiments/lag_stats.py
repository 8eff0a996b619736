"""LAG judged at a real horizon, per choosing step k over seeds (docs/methods.md §2, issue 34): how much better the
loss at k ranks the candidates by their loss at m than the loss at growth does (paired by seed), the top-1 regret
of choosing at k, how often the pick is the step-m best and from which k on it stays so (s*), and what LAG's own
pick at k spends to reach the from-scratch control's final loss.

Pure functions over per-seed records (`seed_result`); the intervals and tests come from experiments.stats.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from experiments.stats import mean_ci, paired

HIT_SHARE = 0.8
"""s* asks for the pick to be the step-m best in at least this share of seeds (issue 34)."""


def flops_to_reach(curve: Mapping[int, float], target: float, flops_before: float, flops_per_step: float) -> float:
    """FLOPs spent when `curve` (step -> val loss) first reaches `target`, counting `flops_before` (e.g. the
    source's training) plus `flops_per_step` per step; nan when it never does."""
    reached = [s for s, v in sorted(curve.items()) if v <= target]
    return flops_before + reached[0] * flops_per_step if reached else math.nan


def lag_flops(curve: Mapping[int, float], target: float, source_flops: float, flops_per_step: float, k: int,
              n_candidates: int) -> float:
    """What choosing at k costs until the pick reaches `target`: the source, the other candidates' k steps each
    (LAG trains them all that long before it can choose), and the pick's own steps to the target."""
    return flops_to_reach(curve, target, source_flops + (n_candidates - 1) * k * flops_per_step, flops_per_step)


def seed_result(summary: Mapping[str, Any], ks: Sequence[int], target: float, source_flops: float,
                flops_per_step: float, scratch_flops: float) -> dict[str, Any]:
    """One seed's LAG measurement from experiments.lag_choice's summary: per k the Spearman of the losses at k with those at
    m, the pick and its regret, the pick's FLOPs to `target` over the scratch control's and its loss at m minus
    `target` (the FLOPs resolve only as finely as the validated steps; the gap is the same comparison at equal
    FLOPs, in loss); the same for the step-m best in hindsight (no choosing cost)."""
    rows = {r["step"]: r for r in summary["by_step"]}
    missing = [k for k in ks if k not in rows]
    if missing:
        raise ValueError(f"choosing steps {missing} were not validated in every candidate (logged: {sorted(rows)})")
    curves = {c["name"]: {int(s): v for s, v in c["curve"].items()} for c in summary["candidates"]}
    best, m = summary["best_at_m"], summary["m"]
    return {"spearman": {k: rows[k]["spearman"] for k in ks}, "pick": {k: rows[k]["choice"] for k in ks},
            "regret": {k: rows[k]["regret"] for k in ks}, "best": best,
            "flops_pick": {k: lag_flops(curves[rows[k]["choice"]], target, source_flops, flops_per_step, k,
                                        len(curves)) / scratch_flops for k in ks},
            "flops_best": flops_to_reach(curves[best], target, source_flops, flops_per_step) / scratch_flops,
            "gap_pick": {k: curves[rows[k]["choice"]][m] - target for k in ks}, "gap_best": curves[best][m] - target}


def spearman_gain(per_seed: Sequence[Mapping[str, Any]], k: int) -> dict[str, float] | None:
    """Spearman(k, m) − Spearman(0, m) paired by seed: mean, 95% t interval and p (None below two seeds with
    both defined)."""
    diff = paired([s["spearman"][k] - s["spearman"][0] for s in per_seed])
    return None if diff is None else dataclasses.asdict(diff)


def hit_rate(per_seed: Sequence[Mapping[str, Any]], k: int) -> float:
    """The share of seeds whose pick at k is the step-m best."""
    return sum(s["pick"][k] == s["best"] for s in per_seed) / len(per_seed) if per_seed else math.nan


def s_star(hits: Mapping[int, float], share: float = HIT_SHARE) -> int | None:
    """The smallest choosing step from which on (it and every later one) the pick is the step-m best in at least
    `share` of seeds; None when even the last choosing step falls short."""
    settled = None
    for k in sorted(hits, reverse=True):
        if not hits[k] >= share:
            break
        settled = k
    return settled


def horizon_table(per_seed: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """Per k over seeds: the paired Spearman gain, the mean Spearman and regret with t intervals, the hit rate
    and the pick's FLOPs ratio (mean over the seeds whose pick reached the target, and how many did) and loss gap
    to the target at m; then s* and the hindsight best's FLOPs ratio and gap."""
    rows = []
    for k in ks:
        ratios = [s["flops_pick"][k] for s in per_seed]
        rows.append({"k": k, "spearman_gain": spearman_gain(per_seed, k) if k else None,
                     "spearman": mean_ci(s["spearman"][k] for s in per_seed),
                     "regret": mean_ci(s["regret"][k] for s in per_seed), "hits": hit_rate(per_seed, k),
                     "flops_pick": mean_ci(ratios), "pick_reached": sum(math.isfinite(r) for r in ratios),
                     "gap_pick": mean_ci(s["gap_pick"][k] for s in per_seed)})
    best = [s["flops_best"] for s in per_seed]
    return {"rows": rows, "s_star": s_star({r["k"]: r["hits"] for r in rows}), "flops_best": mean_ci(best),
            "best_reached": sum(math.isfinite(r) for r in best), "gap_best": mean_ci(s["gap_best"] for s in per_seed),
            "seeds": len(per_seed)}
