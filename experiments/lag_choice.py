"""LAG (Landscape-Aware Growing, arXiv 2406.02469; docs/methods.md §2): grow every candidate, train each for k
steps under one config (same optimizer, schedule, data order, seed), pick the lowest validation loss at step k.

The selection rule and its statistics are pure functions (tested alone); `run_lag` orchestrates the folders
and runs. Experiment layout under `out/`:
    plan.json            what the experiment is (a re-run with other settings is refused)
    tokenizer.model      the source's tokenizer (or its HF tokenizer files), pinned for every candidate
    grown/<candidate>/   grown weights folders        runs/<candidate>/  their training runs (+ .log)
    lag.md lag.json lag.png
Every step is resumable: a finished folder or run is skipped, an interrupted run resumes from its checkpoint.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from scipy import stats

from experiments.lag_report import write_lag_report
from experiments.launcher import check_user_overrides, claim_experiment, train_phase, val_curve
from growth import GrowthError
from growth.folders import (check_operator, check_target, grow_folder, is_grown_folder, model_overrides, parse_params,
                            source_info)
from model import ModelConfig
from pretrain.config import load_config
from storage.io import read_yaml
from storage.tokenizer_files import copy_tokenizer, find_tokenizer
from storage.weights import weights_config

Curves = Mapping[str, Mapping[int, float]]


class LagError(GrowthError):
    """A LAG request or a set of curves that cannot give a choice; the message names what is missing."""


# ---- the selection rule (pure) -----------------------------------------------------------------------------
def choose(curves: Curves, k: int) -> str:
    """The candidate with the lowest validation loss at step k >= 1 -- never step 0, the loss at growth, which
    LAG shows misleads (a function-preserving operator always wins there). NaN (a diverged run) never wins;
    ties go to the earlier candidate in the pool's order."""
    if k < 1:
        raise LagError(f"LAG chooses after a lag of k >= 1 steps, got k={k}: step 0 is the loss at growth")
    losses = losses_at(curves, k)
    if all(math.isnan(v) for v in losses.values()):
        raise LagError(f"every candidate's validation loss at step {k} is NaN: {sorted(losses)}")
    return argmin(losses)


def losses_at(curves: Curves, step: int) -> dict[str, float]:
    """Each candidate's validation loss at `step`; a candidate without it is an error naming what it has."""
    if not curves:
        raise LagError("no candidates")
    missing = {name: max(c, default=None) for name, c in curves.items() if step not in c}
    if missing:
        raise LagError(f"no validation loss at step {step} for {sorted(missing)} (their last logged steps: "
                       f"{missing}); LAG needs val/loss at every candidate's step {step} (eval.every=1)")
    return {name: float(c[step]) for name, c in curves.items()}


def argmin(values: Mapping[str, float]) -> str:
    """The name with the lowest value; NaN counts as +inf; ties go to the first (pool order)."""
    return min(values, key=lambda n: math.inf if math.isnan(values[n]) else values[n])


def ranks(values: Mapping[str, float]) -> dict[str, int]:
    """1 = lowest loss; equal values share the better rank (1, 2, 2, 4); NaN ranks last."""
    key = {n: math.inf if math.isnan(v) else v for n, v in values.items()}
    return {n: 1 + sum(other < key[n] for other in key.values()) for n in key}


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when undefined (< 3 points or a constant)."""
    return _rank_correlation(stats.spearmanr, x, y)


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties accounted for); NaN when undefined (< 3 points or a constant)."""
    return _rank_correlation(stats.kendalltau, x, y)


def _rank_correlation(statistic: Any, x: Sequence[float], y: Sequence[float]) -> float:
    if len(x) != len(y):
        raise LagError(f"rank correlations need paired values, got {len(x)} and {len(y)}")
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(statistic(x, y).statistic)


def selection_by_step(curves: Curves, m: int) -> list[dict[str, Any]]:
    """LAG as a measurement: for every step s <= m that every candidate logged, how well the loss at s predicts
    the loss at the horizon m -- its Spearman and Kendall correlation with it, the candidate choosing at s
    would pick, and that choice's top-1 regret (its loss at m minus the best loss at m)."""
    at_m = losses_at(curves, m)
    finite = [v for v in at_m.values() if not math.isnan(v)]
    if not finite:
        raise LagError(f"every candidate's validation loss at step {m} is NaN: {sorted(at_m)}")
    best, names = min(finite), list(curves)
    logged = sorted(set.intersection(*(set(c) for c in curves.values())))
    rows = []
    for step in (s for s in logged if s <= m):
        at_s = losses_at(curves, step)
        pick = argmin(at_s)
        x, y = [at_s[n] for n in names], [at_m[n] for n in names]
        rows.append({"step": step, "spearman": spearman(x, y), "kendall": kendall(x, y), "choice": pick,
                     "regret": at_m[pick] - best})
    return rows


def summarize(curves: Curves, k: int, validate_steps: int | None = None) -> dict[str, Any]:
    """The LAG decision and what it rests on: losses and ranks at 0 and k (and at the validation horizon m,
    with the rank correlations of the step-0 and step-k losses with the step-m loss, and `by_step`: the same
    correlations and the top-1 regret of choosing at every logged step). `winner_by_init` is what
    choosing at growth would pick: reported beside LAG's choice, never used for it."""
    at0, atk = losses_at(curves, 0), losses_at(curves, k)
    summary: dict[str, Any] = {
        "k": k, "winner": choose(curves, k), "winner_by_init": argmin(at0),
        "loss_0": at0, "rank_0": ranks(at0), "loss_k": atk, "rank_k": ranks(atk),
    }
    if validate_steps is not None:
        atm = losses_at(curves, validate_steps)
        names = list(curves)
        summary |= {"m": validate_steps, "loss_m": atm, "rank_m": ranks(atm),
                    "best_at_m": argmin(atm),
                    "spearman_0_m": spearman([at0[n] for n in names], [atm[n] for n in names]),
                    "spearman_k_m": spearman([atk[n] for n in names], [atm[n] for n in names]),
                    "by_step": selection_by_step(curves, validate_steps)}
    return summary


# ---- the experiment ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """One pool entry: `op` or `op:key=value:key=value` (e.g. `stack_middle:block=1`)."""

    spec: str
    op: str = field(init=False)
    params: dict = field(init=False)

    def __post_init__(self) -> None:
        op, *items = self.spec.split(":")
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "params", parse_params(items))

    @property
    def name(self) -> str:
        """A file- and override-safe label: `stack_middle:block=1` -> `stack_middle-block1`."""
        return self.spec.replace(":", "-").replace("=", "")


def parse_pool(text: str | Sequence[str]) -> list[Candidate]:
    """`stack,interleave,zero_block:position=interleave` -> candidates; duplicates are refused."""
    specs = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not specs:
        raise LagError("--pool is empty; give operator names, e.g. stack,stack_top,interleave,zero_block")
    pool = [Candidate(s) for s in specs]
    names = [c.name for c in pool]
    if len(set(names)) != len(names):
        raise LagError(f"--pool lists a candidate twice: {names}")
    for cand in pool:  # an operator's name and parameters, before any source trains
        check_operator(cand.op, cand.params)
    return pool


@dataclass
class LagPlan:
    """Everything that defines a LAG experiment; `run_lag` carries it out."""

    source: Path
    target: list[str]
    pool: list[Candidate]
    lag_steps: int
    config: Path
    out: Path
    overrides: list[str] = field(default_factory=list)
    ranks: int = 2
    validate_steps: int | None = None
    continue_steps: int | None = None
    continue_final: bool = True
    """Whether the winner's continuation is its run's last phase (the config's schedule) or, inside gradual
    stacking, an intermediate stage (constant lr)."""
    carry: bool = False
    """Grow with the source's mapped Adam moments and let every candidate continue the source's optimizer, step
    and data position (train.carry: no fresh Adam, no new warmup); steps and curves stay counted from growth."""
    choosing_steps: list[int] | None = None
    """LAG read at a real horizon (experiments/lag.py): each candidate is one launch to `validate_steps` under
    the config's own schedule (decayed to its floor at m), validated only at these steps and at m."""

    def check(self) -> None:
        if self.lag_steps < 1:
            raise LagError(f"--lag-steps must be >= 1, got {self.lag_steps}: LAG never chooses at step 0")
        for name, value in (("--validate-steps", self.validate_steps), ("--continue-steps", self.continue_steps)):
            if value is not None and value <= self.lag_steps:
                raise LagError(f"{name}={value} must exceed --lag-steps={self.lag_steps}")
        if self.choosing_steps is not None:
            bad = [s for s in self.choosing_steps if not 0 <= s < (self.validate_steps or 0)]
            if self.validate_steps is None or bad:
                raise LagError(f"choosing steps {bad or self.choosing_steps} must lie in [0, m) with m = "
                               f"--validate-steps={self.validate_steps}")
        if not Path(self.config).is_file():
            raise LagError(f"--config {self.config} does not exist")
        check_user_overrides(self.overrides)
        for cand in self.pool:
            check_operator(cand.op, cand.params)

    def identity(self) -> dict[str, Any]:
        """What must not change when an experiment directory is re-used (the pool may grow)."""
        return {"source": source_info(self.source)["path"], "target": self.target, "lag_steps": self.lag_steps,
                "config": str(Path(self.config).resolve()), "overrides": self.overrides, "ranks": self.ranks,
                "carry": self.carry, "choosing_steps": self.choosing_steps}


def run_lag(plan: LagPlan) -> dict[str, Any]:
    """Grow, lag-train, choose, (validate, continue) and report; returns the summary written to lag.json."""
    plan.check()
    check_target(weights_config(Path(source_info(plan.source)["path"])), plan.target)  # before anything is written
    load_config(plan.config, plan.overrides)
    out = Path(plan.out)
    claim_experiment(out, plan.identity())
    common = [*plan.overrides, *_pinned_tokenizer(plan.source, out)]
    if plan.carry:
        common += ["train.carry.optimizer=true", "train.carry.schedule=continue"]
    records: dict[str, dict] = {}
    for cand in plan.pool:
        folder = out / "grown" / cand.name
        if not is_grown_folder(folder):
            print(f"[growth] {cand.name}: growing {plan.source} with {cand.op} {cand.params or ''}", flush=True)
            grow_folder(plan.source, cand.op, plan.target, folder, cand.params, carry=plan.carry)
        records[cand.name] = json.loads((folder / "record.json").read_text())
        _warn_if_same_model(cand.name, records)
    # A carried run counts its steps from the source's start; the plan's steps (and the curves) from growth.
    origin = int(records[plan.pool[0].name]["source_step"] or 0) if plan.carry else 0
    if plan.choosing_steps is not None:
        _train_to_horizon(plan, out, common, origin)
    else:
        _train_lag_then_validate(plan, out, common, origin)
    curves = {c.name: {s - origin: v for s, v in val_curve(out / "runs" / c.name).items()} for c in plan.pool}
    summary = summarize(curves, plan.lag_steps, plan.validate_steps)
    summary |= {"source": plan.identity()["source"], "source_step": records[plan.pool[0].name]["source_step"],
                "target": plan.target, "config": str(plan.config), "overrides": plan.overrides,
                "candidates": [{"name": c.name, "op": c.op, "params": c.params, "run": str(out / "runs" / c.name),
                                "function_preserving": records[c.name].get("function_preserving"),
                                "layer_map": records[c.name].get("layer_map"),
                                "curve": {str(s): v for s, v in sorted(curves[c.name].items())}}
                               for c in plan.pool]}
    winner = summary["winner"]
    print(f"[growth] LAG winner at step {plan.lag_steps}: {winner} (by the loss at growth it would be "
          f"{summary['winner_by_init']})", flush=True)
    if plan.continue_steps:
        train_phase(out / "runs" / winner, plan.config, _run_overrides(out, winner, common), origin + plan.continue_steps,
                    final=plan.continue_final, ranks=plan.ranks, label=f"winner {winner} continued")
        summary["continued"] = {"run": str(out / "runs" / winner), "steps": plan.continue_steps}
    write_lag_report(out, summary)
    print(f"[growth] report: {out / 'lag.md'}", flush=True)
    return summary


def _train_to_horizon(plan: LagPlan, out: Path, common: list[str], origin: int) -> None:
    """Every candidate in one launch to m under the config's schedule, validated at the choosing steps and m."""
    steps = [origin + s for s in [*plan.choosing_steps, plan.validate_steps]]
    for i, cand in enumerate(plan.pool, 1):
        train_phase(out / "runs" / cand.name, plan.config, _run_overrides(out, cand.name, common),
                    origin + plan.validate_steps, final=True, ranks=plan.ranks, eval_every=0, eval_at=steps,
                    label=f"[{i}/{len(plan.pool)}] {cand.name} to m = {plan.validate_steps}")


def _train_lag_then_validate(plan: LagPlan, out: Path, common: list[str], origin: int) -> None:
    """The lag at constant lr, validated every step, then (with --validate-steps) each run on to m under the
    config's schedule; under a constant lr the two are one phase: one launch to m, evaluated every step."""
    in_one = plan.validate_steps is not None and _constant_lr(plan)
    for i, cand in enumerate(plan.pool, 1):
        train_phase(out / "runs" / cand.name, plan.config, _run_overrides(out, cand.name, common),
                    origin + (plan.validate_steps if in_one else plan.lag_steps), final=False, ranks=plan.ranks,
                    label=f"[{i}/{len(plan.pool)}] {cand.name} lag" + (" and validation" if in_one else ""),
                    eval_every=1)
    for i, cand in enumerate(plan.pool if plan.validate_steps and not in_one else [], 1):
        train_phase(out / "runs" / cand.name, plan.config, _run_overrides(out, cand.name, common),
                    origin + plan.validate_steps, final=True, ranks=plan.ranks,
                    label=f"[{i}/{len(plan.pool)}] {cand.name} validation")


def _constant_lr(plan: LagPlan) -> bool:
    """Whether the candidates' config (with the plan's overrides) keeps a constant lr after warmup, so that the
    validation phase's schedule is the lag's."""
    schedules = [o.split("=", 1)[1] for o in plan.overrides if o.startswith("train.schedule=")]
    return (schedules[-1] if schedules else read_yaml(plan.config, "--config").get("train", {}).get("schedule")) == "constant"


def _warn_if_same_model(name: str, records: dict[str, dict]) -> None:
    """Say so when two candidates build the same model (e.g. stack and stack_top when doubling): their runs
    are the same run twice, a useful determinism check but no extra choice."""
    record = records[name]
    if None in record.get("layer_map", [None]):
        return
    twins = [n for n, r in records.items() if n != name and r.get("layer_map") == record["layer_map"]]
    if twins:
        print(f"[growth] note: {name} builds the same layer map as {twins} ({record['layer_map']}): same model",
              flush=True)


def _run_overrides(out: Path, name: str, common: list[str]) -> list[str]:
    """A candidate's run: the shared overrides, then its own start (its grown folder and its exact shape)."""
    folder = out / "grown" / name
    cfg = ModelConfig(**json.loads((folder / "model_config.json").read_text()))
    return [*common, f"train.init_from={folder.resolve()}", *model_overrides(cfg)]


def _pinned_tokenizer(source: Path, out: Path) -> list[str]:
    """Pin every candidate to the source's own tokenizer (copied into `out` once), when the source has one."""
    tokenizer = source_info(source)["tokenizer"]
    if tokenizer is None:
        return []
    pinned = find_tokenizer(out) or copy_tokenizer(tokenizer, out)
    return [f"data.tokenizer={pinned.resolve()}"]
