"""Adaptive gradual stacking as an experiment (docs/methods.md §2, issue 34): does choosing the stacking operator
by LAG at every stage beat one fixed operator, and does either match the final shape trained from scratch at
fewer FLOPs?

    python -m experiments configs/experiments/stacking_horizon.yaml --out runs/stacking_horizon [--seeds 0,1]

Per seed, three arms over the same steps, data order and schedule: `adaptive` (experiments/stacking_run.py, LAG choosing
among `adaptive_pool` at every stage), `fixed` (the same stages, always `fixed_pool`'s one operator) and
`scratch` (the final depth from step 0). The claims are fixed here, before any run: adaptive's final val loss is
lower than fixed's (one-sided paired t, by seed), and each stacking arm's is within ±`margin` of scratch's (paired
TOST), Holm over each family. Reported beside them: each arm's FLOPs over scratch's (LAG's losing candidates
counted), and the FLOPs scratch needs to reach each arm's final loss over the arm's own.

Spec (YAML): `config` (its model.n_layers is stage 0's depth), `ranks`, `seeds`, `stages` [{at_step, depth}],
`steps`, `lag_steps`, `carry`, `adaptive_pool`, `fixed_pool`, `overrides`, `margin`, `alpha`. Layout under `out/`:
    adaptive/s<seed>/ fixed/s<seed>/   `growth stack` experiments     scratch/s<seed>/   the controls
    stacking.md stacking.json stacking.png   (rewritten after every seed)
Everything resumes: finished runs are skipped, an interrupted one continues.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from experiments import stats
from experiments.lag_choice import parse_pool
from experiments.lag_stats import flops_to_reach
from experiments.launcher import claim_experiment, exit_code, train_phase, val_curve
from experiments.spec import KINDS, Kind, check_spec, missing_config, read_spec
from settings.fields import an_integer, count, each, inside, positive, ruled
from experiments.stacking_run import StackingPlan, Stage, run_stacking
from growth import GrowthError
from launch.command import render_overrides
from pretrain.config import load_config
from storage.io import atomic_save_figure, atomic_write_text

SPEC_KEYS = {"config", "ranks", "seeds", "stages", "steps", "lag_steps", "carry", "adaptive_pool", "fixed_pool",
             "overrides", "margin", "alpha"}
STACKED = ("adaptive", "fixed")
ARMS = (*STACKED, "scratch")


@dataclass
class StackingExperiment:
    config: Path
    seeds: list[int] = ruled(MISSING, each(an_integer()))
    stages: list[Stage]
    steps: int = count()
    lag_steps: int = count()
    adaptive_pool: str
    fixed_pool: str
    margin: float = positive(MISSING)
    """The equivalence margin, in val-loss units."""
    alpha: float = inside(0.05, 0, 0.5)
    carry: bool = True
    ranks: int = count(1)
    overrides: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "StackingExperiment":
        """Read and check a spec; errors name the file and the key."""
        raw = read_spec(path, SPEC_KEYS, {"config", "seeds", "stages", "steps", "lag_steps", "adaptive_pool",
                                          "fixed_pool", "margin"}, GrowthError)
        try:
            stages = [Stage(int(s["at_step"]), int(s["depth"])) for s in raw["stages"]]
        except (TypeError, KeyError, ValueError):
            raise GrowthError(f"{path}: stages={raw['stages']!r} must be a list of {{at_step, depth}} "
                              "integers") from None
        spec = cls(config=Path(raw["config"]), seeds=raw["seeds"], stages=stages, steps=raw["steps"],
                   lag_steps=raw["lag_steps"], adaptive_pool=",".join(raw["adaptive_pool"]),
                   fixed_pool=",".join(raw["fixed_pool"]), margin=raw["margin"], alpha=raw.get("alpha", 0.05),
                   carry=bool(raw.get("carry", True)), ranks=raw.get("ranks", 1),
                   overrides=render_overrides(raw.get("overrides"), f"{path}: overrides"))
        check_spec(spec, path, GrowthError)
        spec.check(path)
        return spec

    def check(self, path: Path) -> None:
        if problem := missing_config(self.config):
            raise GrowthError(f"{path}: {problem}")
        if len(parse_pool(self.fixed_pool)) != 1:
            raise GrowthError(f"{path}: fixed_pool={self.fixed_pool!r} must name exactly one operator (the fixed "
                              "schedule's); adaptive_pool is LAG's choice")
        if len(parse_pool(self.adaptive_pool)) < 2 and ":block=all" not in self.adaptive_pool:
            raise GrowthError(f"{path}: adaptive_pool={self.adaptive_pool!r} gives LAG nothing to choose between")
        if len(set(self.seeds)) != len(self.seeds) or len(self.seeds) < 2:
            raise GrowthError(f"{path}: seeds={self.seeds} must be at least two distinct seeds (the tests pair by "
                              "seed)")
        self.plan(Path("."), "adaptive", self.seeds[0]).check()  # stages in order, each longer than the lag

    def plan(self, out: Path, arm: str, seed: int) -> StackingPlan:
        """The `growth stack` experiment of one stacking arm and seed."""
        pool = self.adaptive_pool if arm == "adaptive" else self.fixed_pool
        return StackingPlan(config=self.config, stages=self.stages, out=out / arm / f"s{seed}", steps=self.steps,
                            lag_steps=self.lag_steps, pool=pool, ranks=self.ranks,
                            overrides=[*self.overrides, f"run.seed={seed}"], carry=self.carry)

    def identity(self) -> dict[str, Any]:
        """Everything but the seeds (each seed has folders of its own, so several calls can fill one folder)."""
        return json.loads(json.dumps({k: v for k, v in vars(self).items() if k != "seeds"}, default=str))


# ---- accounting (pure) -------------------------------------------------------------------------------------
def flops_at(stages: Sequence[Mapping[str, Any]], start_depth: int, flops_per_step: Callable[[int], float],
             step: int) -> float:
    """Training FLOPs a stacking run has spent by global `step`: each stage's steps at its depth, plus, from the
    stage's start, its LAG overhead (the losing candidates' lag steps, trained before the pick)."""
    total = 0.0
    starts = [s["at_step"] for s in stages]
    for i, stage in enumerate(stages):
        if step < stage["at_step"]:
            break
        depth = stage.get("depth", start_depth)
        end = starts[i + 1] if i + 1 < len(stages) else math.inf
        total += (min(step, end) - stage["at_step"] + stage.get("lag_overhead_steps", 0)) * flops_per_step(depth)
    return total


def seed_record(stacked: Mapping[str, Mapping[str, Any]], scratch_curve: Mapping[int, float], steps: int,
                start_depth: int, final_depth: int, flops_per_step: Callable[[int], float]) -> dict[str, Any]:
    """One seed: per arm its final val loss and FLOPs over scratch's; per stacking arm the FLOPs scratch needs to
    reach that arm's final loss over the arm's own (> 1: stacking got there cheaper; nan: scratch never did) and
    LAG's picks per stage."""
    scratch_flops = steps * flops_per_step(final_depth)
    record: dict[str, Any] = {"scratch": {"loss": scratch_curve[steps], "flops": 1.0}}
    for arm, result in stacked.items():
        loss, spent = result["curve"][str(steps)], flops_at(result["stages"], start_depth, flops_per_step, steps)
        reach = flops_to_reach(scratch_curve, loss, 0.0, flops_per_step(final_depth))
        record[arm] = {"loss": loss, "flops": spent / scratch_flops, "scratch_to_reach": reach / spent,
                       "picks": [s["winner"] for s in result["stages"][1:]]}
    return record


def claims(records: Sequence[Mapping[str, Any]], margin: float, alpha: float) -> list[dict[str, Any]]:
    """The pre-registered claims over seeds (paired by seed), Holm-adjusted within each family: adaptive's final
    loss lower than fixed's (directional); each stacking arm's within ±margin of scratch's (equivalence)."""
    loss = {arm: [r[arm]["loss"] for r in records] for arm in ARMS}
    lower = stats.paired([a - f for a, f in zip(loss["adaptive"], loss["fixed"])], alternative="less")
    directional = [{"claim": "adaptive final val loss < fixed's", "family": "directional", "test": lower}]
    equivalence = [{"claim": f"{arm} final val loss within ±{margin} of scratch's", "family": "equivalence",
                    "test": stats.tost_paired(loss[arm], loss["scratch"], margin, alpha)} for arm in STACKED]
    out = []
    for family in (directional, equivalence):
        adjusted = stats.holm([c["test"].p if c["test"] else math.nan for c in family])
        out += [c | {"holm_p": p, "holds": p < alpha} for c, p in zip(family, adjusted)]
    return out


# ---- the experiment ----------------------------------------------------------------------------------------
def run_experiment(spec: StackingExperiment, out: Path) -> dict[str, Any]:
    """Every seed's three arms; the report is rewritten after each seed (covering the seeds done so far)."""
    out = Path(out)
    resolved = load_config(spec.config, spec.overrides)  # before anything is written
    claim_experiment(out, spec.identity())
    start_depth, final_depth = resolved.model.n_layers, spec.stages[-1].depth
    tokens = resolved.train.micro_batch_size * resolved.train.grad_accum * spec.ranks
    seq_len = resolved.data.seq_len

    def flops_per_step(depth: int) -> float:
        cfg = dataclasses.replace(resolved.model, n_layers=depth)
        return cfg.flops_per_token(seq_len) * tokens * seq_len

    records, curves = [], []
    for seed in spec.seeds:
        stacked = {arm: run_stacking(spec.plan(out, arm, seed)) for arm in STACKED}
        scratch = out / "scratch" / f"s{seed}"
        train_phase(scratch, spec.config, [*spec.overrides, f"run.seed={seed}", f"model.n_layers={final_depth}"],
                    spec.steps, final=True, ranks=spec.ranks, label=f"scratch s{seed} ({final_depth} layers)")
        scratch_curve = val_curve(scratch)
        records.append(seed_record(stacked, scratch_curve, spec.steps, start_depth, final_depth, flops_per_step)
                       | {"seed": seed})
        curves.append({arm: _flops_curve(r, start_depth, flops_per_step) for arm, r in stacked.items()}
                      | {"scratch": {s * flops_per_step(final_depth): v for s, v in scratch_curve.items()}})
        results = {"seeds": records, "claims": claims(records, spec.margin, spec.alpha), "margin": spec.margin,
                   "alpha": spec.alpha, "steps": spec.steps, "stages": [vars(s) for s in spec.stages],
                   "start_depth": start_depth, "lag_steps": spec.lag_steps, "adaptive_pool": spec.adaptive_pool,
                   "fixed_pool": spec.fixed_pool}
        atomic_write_text(out / "stacking.json", json.dumps(results, indent=2, default=_json_test))
        atomic_write_text(out / "stacking.md", render(results))
        plot(out / "stacking.png", curves, [s.at_step for s in spec.stages])
    return results


def _flops_curve(result: Mapping[str, Any], start_depth: int, flops_per_step: Callable[[int], float]
                 ) -> dict[float, float]:
    return {flops_at(result["stages"], start_depth, flops_per_step, int(s)): v for s, v in result["curve"].items()}


def _json_test(value: Any) -> Any:
    return vars(value) if isinstance(value, stats.Difference) else str(value)


# ---- the report --------------------------------------------------------------------------------------------
def _fmt(values: Sequence[float], digits: int = 3) -> str:
    mean, half, n = stats.mean_ci(values)
    if n == 0:
        return "n/a"
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def render(results: Mapping[str, Any]) -> str:
    """stacking.md: the claims with their tests, then per arm the final loss and FLOPs, then LAG's picks."""
    seeds = results["seeds"]
    stages = " → ".join([str(results["start_depth"])] + [f"{s['depth']} (step {s['at_step']})"
                                                          for s in results["stages"]])
    lines = [f"# Adaptive gradual stacking against fixed stacking and scratch: {len(seeds)} seeds", "",
             f"Depth {stages}, {results['steps']} steps; adaptive: LAG over {results['adaptive_pool']} at every "
             f"stage (lag {results['lag_steps']} steps); fixed: {results['fixed_pool']} at every stage; scratch: the "
             "final depth from step 0. Same steps, data order, schedule and seed in every arm.", "",
             "## Pre-registered claims (paired by seed; Holm within each family)", "",
             "| claim | difference | interval | p | Holm p | verdict |", "|---|---|---|---|---|---|"]
    for c in results["claims"]:
        t = c["test"]
        if t is None:
            lines.append(f"| {c['claim']} | — | — | — | 1 | not tested (< 2 seeds) |")
            continue
        t = t if isinstance(t, Mapping) else vars(t)
        kind = "90% (TOST)" if c["family"] == "equivalence" else "one-sided 95%"
        verdict = (("equivalent" if c["holds"] else "not shown equivalent") if c["family"] == "equivalence"
                   else ("supported" if c["holds"] else "not shown"))
        lines.append(f"| {c['claim']} | {t['diff']:+.4f} | {kind} [{t['low']:+.4f}, {t['high']:+.4f}] | "
                     f"{t['p']:.3g} | {c['holm_p']:.3g} | **{verdict}** |")
    lines += ["", "## Per arm (mean ± 95% t half-width over seeds)", "",
              "| arm | final val loss | FLOPs / scratch's | scratch's FLOPs to reach this loss / this arm's |",
              "|---|---|---|---|"]
    for arm in ARMS:
        rows = [r[arm] for r in seeds]
        reach = [r.get("scratch_to_reach", math.nan) for r in rows]
        reached = sum(math.isfinite(x) for x in reach)
        to_reach = ("—" if arm == "scratch" else f"{_fmt(reach)} (reached in {reached}/{len(rows)})" if reached
                    else f"> {1 / max(r['flops'] for r in rows):.2f} (scratch never reached it: 0/{len(rows)})")
        lines.append(f"| {arm} | {_fmt([r['loss'] for r in rows], 4)} | {_fmt([r['flops'] for r in rows])} | "
                     f"{to_reach} |")
    lines += ["", f"FLOPs count LAG's losing candidates (their lag steps). \"Reached\": scratch's validated curve "
              f"(every eval.every steps) got to the arm's final loss within {results['steps']} steps; > 1 means "
              "stacking reached it for less (never reached: more than scratch's whole run over the arm's).", "",
              "## Per seed", "",
              "| seed | adaptive | fixed | scratch | LAG's picks (stages 1..) |", "|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['adaptive']['loss']:.4f} | {r['fixed']['loss']:.4f} | {r['scratch']['loss']:.4f} | "
              f"{', '.join(r['adaptive']['picks'])} |" for r in seeds]
    return "\n".join(lines) + "\n"


def plot(path: Path, curves: Sequence[Mapping[str, Mapping[float, float]]], growth_steps: Sequence[int]) -> None:
    """Validation loss against training FLOPs, one line per arm and seed (the stacking arms' jumps at growth are
    their LAG overhead)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"adaptive": "tab:blue", "fixed": "tab:orange", "scratch": "tab:grey"}
    for i, seed_curves in enumerate(curves):
        for arm, curve in seed_curves.items():
            xs = sorted(curve)
            ax.plot(xs, [curve[x] for x in xs], color=colors[arm], alpha=0.6, linewidth=0.9,
                    label=arm if i == 0 else None)
    ax.set(xlabel="training FLOPs", ylabel="validation loss",
           title=f"Gradual stacking vs scratch (growth at steps {list(growth_steps)})")
    lows = [min(c.values()) for sc in curves for c in sc.values()]
    ax.set_ylim(min(lows) - 0.05, min(lows) + 1.5)  # the end of training, not step 0's loss
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=90)
    plt.close(fig)


def main(spec_path: Path, out: Path, seeds: Sequence[int] | None) -> int:
    """Load a stacking spec, keep `seeds` (None: all) and run it; the exit code (2: a bad spec or a failed run)."""
    def work() -> int:
        spec = StackingExperiment.load(spec_path)
        if seeds:
            unknown = set(seeds) - set(spec.seeds)
            if unknown:
                raise GrowthError(f"seed(s) {sorted(unknown)} are not in the spec's seeds {spec.seeds}")
            spec.seeds = [s for s in spec.seeds if s in seeds]
        run_experiment(spec, out)
        print(f"[experiments] report: {Path(out) / 'stacking.md'}", flush=True)
        return 0

    return exit_code(work)


KINDS.add("stacking", Kind(run=lambda args: main(args.spec, args.out, args.seeds), options=("seeds",),
                           doc="adaptive and fixed gradual stacking against scratch per seed, then stacking.md "
                               "(configs/experiments/stacking_horizon.yaml)"))
