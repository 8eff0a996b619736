"""Adaptive gradual stacking (docs/methods.md §2): a schedule of stages (at global step s_i, grow to depth d_i); at
each stage LAG chooses among stacking choices with a short lag, and training continues from the winner.

Layout under `out/`:
    plan.json                 the experiment (a re-run with other settings is refused; the same one resumes)
    stage0/                   the run from scratch, to s_1
    stage<i>/                 a LAG experiment (experiments/lag_choice.py) from the previous stage's checkpoint at s_i; its
                              winner's run (stage<i>/runs/<winner>) continues to s_{i+1} (the last to `steps`)
    stacking.md stacking.json stacking.png   stages, choices and the stitched validation curve (global steps)
By default every stage's runs start a fresh optimizer and their own warmup (what `train.init_from` gives), and
count their steps from growth. With `carry` they continue the previous stage's Adam moments (mapped through the
operator), step and data position, as one run grown in place: no new warmup, steps counted globally. Either
way every stage but the last runs at constant lr after warmup; the last follows the config's schedule (see
experiments/launcher.py), with carry evaluated at the global step. The losing candidates' lag steps are LAG's
overhead and are reported as such.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from experiments.lag_choice import LagPlan, parse_pool, run_lag
from experiments.lag_report import plot_curves
from experiments.launcher import check_user_overrides, claim_experiment, train_phase, val_curve
from growth import GrowthError
from pretrain.config import load_config
from storage.folders import tag_for
from storage.io import atomic_write_text, read_yaml
from storage.weights import model_config_of

DEFAULT_POOL = "stack_top,stack_middle:block=all,stack"
"""`block=all` stands for every block size a stage allows, so LAG chooses how many layers to copy as well as which."""


@dataclass(frozen=True)
class Stage:
    """At global step `at_step`, grow to `depth` layers."""

    at_step: int
    depth: int


def stage_pool(pool: str, source_layers: int, target_layers: int) -> str:
    """The pool of one stage, `stack_middle:block=all` expanded to every block size b that fits: 1 <= b <= the
    source's layers and b divides the number of new layers (each b copies a different middle block)."""
    new = target_layers - source_layers
    out = []
    for spec in filter(None, (s.strip() for s in pool.split(","))):
        if spec.endswith(":block=all"):
            out += [f"{spec[:-3]}{b}" for b in range(1, min(new, source_layers) + 1) if new % b == 0]
        else:
            out.append(spec)
    return ",".join(out)


def parse_schedule(text: str) -> list[Stage]:
    """`"100:4,200:8"` -> stages (at step 100 grow to 4 layers, at 200 to 8)."""
    stages = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            at, depth = (int(x) for x in item.split(":"))
        except ValueError:
            raise GrowthError(f"--schedule item {item!r} is not at_step:depth (e.g. 100:4)") from None
        stages.append(Stage(at, depth))
    return stages


@dataclass
class StackingPlan:
    """A gradual-stacking experiment: config (stage-0 model), stages, pool, lag, total steps, output."""

    config: Path
    stages: list[Stage]
    out: Path
    steps: int
    lag_steps: int
    pool: str = DEFAULT_POOL
    ranks: int = 2
    overrides: list[str] = field(default_factory=list)
    carry: bool = False
    """Carry the optimizer, step and data position from stage to stage (see the module docstring)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "StackingPlan":
        """Command-line values win over the --plan file's; total steps default to the config's train.steps."""
        spec = OmegaConf.to_container(read_yaml(args.plan, "--plan")) if args.plan else {}
        unknown = set(spec) - {"stages", "pool", "lag_steps", "steps", "carry"}
        if unknown:
            raise GrowthError(f"--plan {args.plan}: unknown keys {sorted(unknown)}; valid: stages, pool, lag_steps, "
                              "steps, carry")
        if args.schedule:
            stages = parse_schedule(args.schedule)
        else:
            stages = [Stage(int(s["at_step"]), int(s["depth"])) for s in spec.get("stages", [])]
        steps = args.steps or spec.get("steps") or read_yaml(args.config, "--config").get("train", {}).get("steps")
        lag_steps = args.lag_steps or spec.get("lag_steps")
        needed = (("stages (--schedule, or the plan's stages)", stages),
                  ("--lag-steps (or the plan's lag_steps)", lag_steps),
                  ("total steps (--steps, the plan's steps or the config's train.steps)", steps))
        missing = [what for what, value in needed if not value]
        if missing:
            raise GrowthError(f"gradual stacking needs {'; '.join(missing)}")
        return cls(config=args.config, stages=stages, out=args.out, steps=int(steps), lag_steps=int(lag_steps),
                   pool=args.pool or ",".join(spec.get("pool", [])) or DEFAULT_POOL, ranks=args.ranks,
                   overrides=args.overrides, carry=bool(args.carry or spec.get("carry", False)))

    def check(self) -> None:
        """Stages strictly increasing in step and depth, each long enough for its lag, all before the end."""
        check_user_overrides(self.overrides)
        parse_pool(self.pool)
        bounds = [0] + [s.at_step for s in self.stages] + [self.steps]
        for i, stage in enumerate(self.stages):
            if not bounds[i] < stage.at_step < bounds[i + 2]:
                raise GrowthError(f"stage {i + 1} at_step={stage.at_step} must lie after step {bounds[i]} and before "
                                  f"{bounds[i + 2]} (stages in order, all before the total of {self.steps} steps)")
            if i and stage.depth <= self.stages[i - 1].depth:
                raise GrowthError(f"stage {i + 1} depth={stage.depth} must exceed stage {i}'s "
                                  f"{self.stages[i - 1].depth}")
            if bounds[i + 2] - stage.at_step <= self.lag_steps:
                raise GrowthError(f"stage {i + 1} lasts {bounds[i + 2] - stage.at_step} steps, not more than the lag "
                                  f"of {self.lag_steps}: shorten the lag or space the stages out")


def run_stacking(plan: StackingPlan) -> dict[str, Any]:
    """Train stage 0, then at every stage grow by LAG and continue the winner; writes stacking.{md,json,png}."""
    plan.check()
    first = load_config(plan.config, plan.overrides).model.n_layers  # before anything is written
    if plan.stages[0].depth <= first:
        raise GrowthError(f"stage 1 depth={plan.stages[0].depth} must exceed the stage-0 model's n_layers={first} "
                          "(stacking only grows)")
    out = Path(plan.out)
    claim_experiment(out, {"config": str(Path(plan.config).resolve()), "stages": [vars(s) for s in plan.stages],
                           "steps": plan.steps, "lag_steps": plan.lag_steps, "pool": plan.pool,
                           "overrides": plan.overrides, "ranks": plan.ranks,
                           **({"carry": True} if plan.carry else {})})  # plans from before carry still resume
    run = out / "stage0"
    train_phase(run, plan.config, plan.overrides, plan.stages[0].at_step, final=False, ranks=plan.ranks,
                label="stage 0 (from scratch)")
    done: list[dict[str, Any]] = [{"stage": 0, "at_step": 0, "step_offset": 0, "run": str(run), "winner": None}]
    for i, stage in enumerate(plan.stages, 1):
        end = plan.stages[i].at_step if i < len(plan.stages) else plan.steps
        print(f"[growth] stage {i}/{len(plan.stages)}: at step {stage.at_step} grow to {stage.depth} layers by LAG "
              f"over {plan.pool}, then train to step {end}", flush=True)
        source = run / "checkpoints" / tag_for(stage.at_step - done[-1]["step_offset"])  # in that run's own steps
        pool = stage_pool(plan.pool, model_config_of(source).n_layers, stage.depth)
        summary = run_lag(LagPlan(
            source=source, target=[f"n_layers={stage.depth}"],
            pool=parse_pool(pool), lag_steps=plan.lag_steps, config=plan.config, out=out / f"stage{i}",
            overrides=plan.overrides, ranks=plan.ranks, continue_steps=end - stage.at_step,
            continue_final=i == len(plan.stages), carry=plan.carry))
        run = out / f"stage{i}" / "runs" / summary["winner"]
        done.append({"stage": i, "at_step": stage.at_step, "step_offset": 0 if plan.carry else stage.at_step,
                     "depth": stage.depth, "run": str(run),
                     "winner": summary["winner"], "winner_by_init": summary["winner_by_init"],
                     "loss_k": summary["loss_k"], "lag_report": str(out / f"stage{i}" / "lag.md"),
                     "lag_overhead_steps": plan.lag_steps * (len(summary["loss_k"]) - 1)})
    result = {"steps": plan.steps, "lag_steps": plan.lag_steps, "stages": done, "curve": _stitched(done, plan.steps)}
    _write_report(out, result)
    return result


def _stitched(stages: list[dict[str, Any]], total: int) -> dict[str, float]:
    """The trained model's validation curve in global steps: each stage's run from its start to the next's (a
    stage's run counts from growth, or globally when it carried its source's step: `step_offset` says which)."""
    curve: dict[str, float] = {}
    bounds = [s["at_step"] for s in stages[1:]] + [total]
    for stage, end in zip(stages, bounds):
        for step, loss in val_curve(Path(stage["run"])).items():
            if stage["at_step"] <= stage["step_offset"] + step <= end:
                curve[str(stage["step_offset"] + step)] = loss
    return curve


def _write_report(out: Path, result: dict[str, Any]) -> None:
    atomic_write_text(out / "stacking.json", json.dumps(result, indent=2))
    lines = [f"# Adaptive gradual stacking: {len(result['stages']) - 1} stages, {result['steps']} steps, "
             f"lag {result['lag_steps']}", "", "| stage | at step | depth | LAG's choice | by loss at growth | "
             "lag overhead (steps) | run |", "|---|---|---|---|---|---|---|"]
    for s in result["stages"]:
        lines.append(f"| {s['stage']} | {s['at_step']} | {s.get('depth', '-')} | {s['winner'] or 'from scratch'} | "
                     f"{s.get('winner_by_init') or '-'} | {s.get('lag_overhead_steps', 0)} | `{s['run']}` |")
    final = result["curve"].get(str(result["steps"]))
    lines += ["", f"Validation loss at step {result['steps']}: {final if final is None else round(final, 4)}. "
              "Each stage's LAG table: `stage<i>/lag.md`."]
    atomic_write_text(out / "stacking.md", "\n".join(lines) + "\n")
    plot_curves(out / "stacking.png", {"gradual stacking": result["curve"]}, None,
                [s["at_step"] for s in result["stages"][1:]], "Gradual stacking: val loss (dotted: growth)",
                xlabel="global step")
