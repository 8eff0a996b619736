"""LAG as an experiment (docs/methods.md §2): sources over seeds, a LAG measurement per growth, seed and optimizer
mode (fresh or carried), a from-scratch control at equal FLOPs, and one report over all of them.

    python -m experiments configs/experiments/lag_cpu.yaml --out runs/lag_cpu [--growths d4_to_8] [--seeds 0,1]

Spec (YAML): `config` (the run config of sources, candidates and scratch runs), `ranks`, `seeds`,
`source_steps`, `lag_steps` (k), `validate_steps` (m), `carry` (a list of false/true: the optimizer modes to
measure), `overrides` (for every run) and `growths`: name -> {source: overrides of the source's shape,
to: target shape as for `grow --to`, pool: candidates}. Layout under `out/`:
    sources/<growth>-s<seed>/           the source runs      scratch/<growth>-s<seed>/   the controls
    lag/<growth>-<fresh|carry>-s<seed>/ one `growth lag` experiment each (lag.md, lag.json, lag.png)
    experiment.md experiment.json lag_by_step.png
Everything resumes: a finished run or LAG experiment is skipped, an interrupted one continues.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from experiments.stats import mean_ci
from growth import GrowthError
from growth.folders import resolve_target
from growth.lag import LagPlan, parse_pool, run_lag
from growth.runs import check_run_config, check_user_overrides, claim_experiment, exit_code, train_phase, val_curve
from launch.command import render_overrides
from model import ModelConfig
from storage.folders import tag_for
from storage.io import FileFormatError, atomic_save_figure, atomic_write_text, read_yaml

SPEC_KEYS = {"config", "ranks", "seeds", "source_steps", "lag_steps", "validate_steps", "carry", "overrides",
             "growths"}


@dataclass
class Growth:
    name: str
    source: list[str]
    """Overrides of the source's shape (e.g. model.n_layers=4)."""
    to: list[str]
    pool: str


@dataclass
class LagExperiment:
    config: Path
    seeds: list[int]
    source_steps: int
    lag_steps: int
    validate_steps: int
    growths: list[Growth]
    carry: list[bool] = field(default_factory=lambda: [False, True])
    ranks: int = 2
    overrides: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "LagExperiment":
        """Read and check a spec; errors name the file and the key."""
        try:
            raw = OmegaConf.to_container(read_yaml(path, "experiment spec")) or {}
        except FileFormatError as err:
            raise GrowthError(str(err)) from None
        unknown = set(raw) - SPEC_KEYS
        if unknown:
            raise GrowthError(f"{path}: unknown keys {sorted(unknown)} (valid: {sorted(SPEC_KEYS)})")
        missing = {"config", "seeds", "source_steps", "lag_steps", "validate_steps", "growths"} - set(raw)
        if missing:
            raise GrowthError(f"{path}: missing keys {sorted(missing)}")
        growths = []
        for name, g in raw["growths"].items():
            if not isinstance(g, dict) or set(g) != {"source", "to", "pool"}:
                raise GrowthError(f"{path}: growths.{name} must have exactly the keys source, to, pool")
            growths.append(Growth(name, render_overrides(g["source"], f"{path}: growths.{name}.source"),
                                  list(g["to"]), ",".join(g["pool"])))
        spec = cls(config=Path(raw["config"]), seeds=[int(s) for s in raw["seeds"]],
                   source_steps=int(raw["source_steps"]), lag_steps=int(raw["lag_steps"]),
                   validate_steps=int(raw["validate_steps"]), growths=growths,
                   carry=[bool(c) for c in raw.get("carry", [False, True])], ranks=int(raw.get("ranks", 2)),
                   overrides=render_overrides(raw.get("overrides"), f"{path}: overrides"))
        spec.check()
        return spec

    def check(self) -> None:
        if not self.config.is_file():
            raise GrowthError(f"config {self.config} does not exist")
        if not 1 <= self.lag_steps < self.validate_steps:
            raise GrowthError(f"need 1 <= lag_steps < validate_steps, got {self.lag_steps} and {self.validate_steps}")
        check_user_overrides(self.overrides)
        for g in self.growths:
            parse_pool(g.pool)

    def identity(self) -> dict[str, Any]:
        """What the runs under one experiment folder must agree on: everything but which seeds and growths a
        call runs (each has folders of its own), so a folder can be filled by several calls."""
        fields = {k: v for k, v in vars(self).items() if k not in ("seeds", "growths")}
        return json.loads(json.dumps(fields, default=str))

    def select(self, names: Sequence[str] | None = None, seeds: Sequence[int] | None = None) -> None:
        """Keep only the growths `names` and the seeds `seeds` (None: all of the spec's)."""
        if names:
            unknown = set(names) - {g.name for g in self.growths}
            if unknown:
                raise GrowthError(f"unknown growth(s) {sorted(unknown)}; the spec has {[g.name for g in self.growths]}")
            self.growths = [g for g in self.growths if g.name in names]
        if seeds:
            unknown = set(seeds) - set(self.seeds)
            if unknown:
                raise GrowthError(f"seed(s) {sorted(unknown)} are not in the spec's seeds {self.seeds}")
            self.seeds = [s for s in self.seeds if s in seeds]


# ---- the statistics (pure) -----------------------------------------------------------------------------------
def aggregate_by_step(per_seed: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """`selection_by_step` rows of several seeds -> per step (logged in every seed) the mean and interval of
    Spearman, Kendall and the top-1 regret."""
    steps = sorted(set.intersection(*({r["step"] for r in rows} for rows in per_seed))) if per_seed else []
    by = [{r["step"]: r for r in rows} for rows in per_seed]
    return [{"step": s, **{key: mean_ci([b[s][key] for b in by]) for key in ("spearman", "kendall", "regret")}}
            for s in steps]


def settles_at(by_step: Sequence[dict[str, Any]]) -> int | None:
    """The first choosing step from which the pick is the step-m best in every seed at every later logged step
    (mean regret exactly 0 from there on): where, if anywhere before m, the ranking's phase transition ends.
    None without rows."""
    settled = None
    for row in sorted(by_step, key=lambda r: r["step"], reverse=True):
        if row["regret"][0] != 0.0:
            break
        settled = row["step"]
    return settled


def flops_to_reach(curve: dict[int, float], target: float, flops_before: float, flops_per_step: float) -> float:
    """FLOPs spent when `curve` (step -> val loss) first reaches `target`, counting `flops_before` (e.g. the
    source's training) plus `flops_per_step` per step; nan when it never does."""
    reached = [s for s, v in sorted(curve.items()) if v <= target]
    return flops_before + reached[0] * flops_per_step if reached else math.nan


def scratch_steps(source: ModelConfig, target: ModelConfig, seq_len: int, source_steps: int, grown_steps: int) -> int:
    """Steps of the target shape trained from scratch that cost what the source plus the grown run cost."""
    f_src, f_tgt = source.flops_per_token(seq_len), target.flops_per_token(seq_len)
    return round(source_steps * f_src / f_tgt) + grown_steps


# ---- the experiment ----------------------------------------------------------------------------------------
def run_experiment(spec: LagExperiment, out: Path) -> dict[str, Any]:
    out = Path(out)
    check_run_config(spec.config, spec.overrides)  # before anything is written
    claim_experiment(out, spec.identity())
    results: dict[str, Any] = {"growths": {}}
    for g in spec.growths:
        per_mode: dict[str, list] = {_mode(c): [] for c in spec.carry}
        ratios: dict[str, list[float]] = {_mode(c): [] for c in spec.carry}
        for seed in spec.seeds:
            seeded = [*spec.overrides, f"run.seed={seed}"]
            source = out / "sources" / f"{g.name}-s{seed}"
            train_phase(source, spec.config, [*seeded, *g.source], spec.source_steps, final=True, ranks=spec.ranks,
                        label=f"{g.name} source s{seed}")
            src_cfg = _model_of(source)
            seq_len = int(OmegaConf.load(source / "config.yaml").data.seq_len)  # resolved: set even where defaulted
            tgt_cfg = resolve_target(src_cfg, g.to)
            n_scratch = scratch_steps(src_cfg, tgt_cfg, seq_len, spec.source_steps, spec.validate_steps)
            scratch = out / "scratch" / f"{g.name}-s{seed}"
            train_phase(scratch, spec.config, [*seeded, *(f"model.{o}" if not o.startswith("model.") else o
                                                          for o in g.to)], n_scratch, final=True,
                        ranks=spec.ranks, label=f"{g.name} scratch s{seed} ({n_scratch} steps, equal FLOPs)")
            scratch_curve = val_curve(scratch)
            target_loss = scratch_curve[max(scratch_curve)]
            f_tgt = tgt_cfg.flops_per_token(seq_len)
            scratch_flops = flops_to_reach(scratch_curve, target_loss, 0.0, f_tgt)
            for carry in spec.carry:
                summary = run_lag(LagPlan(
                    source=source / "checkpoints" / tag_for(spec.source_steps), target=g.to,
                    pool=parse_pool(g.pool), lag_steps=spec.lag_steps, config=source / "config.yaml",
                    out=out / "lag" / f"{g.name}-{_mode(carry)}-s{seed}", overrides=spec.overrides,
                    ranks=spec.ranks, validate_steps=spec.validate_steps, carry=carry))
                per_mode[_mode(carry)].append(summary)
                best = summary["best_at_m"]
                curve = {int(s): v for s, v in next(c for c in summary["candidates"] if c["name"] == best)["curve"].items()}
                grown_flops = flops_to_reach(curve, target_loss, spec.source_steps * src_cfg.flops_per_token(seq_len),
                                             f_tgt)
                ratios[_mode(carry)].append(grown_flops / scratch_flops)
        results["growths"][g.name] = {
            "modes": {mode: {"by_step": aggregate_by_step([s["by_step"] for s in sums]),
                             "winners": [s["winner"] for s in sums], "best_at_m": [s["best_at_m"] for s in sums],
                             "flops_ratio": ratios[mode]}
                      for mode, sums in per_mode.items()},
            "pool": g.pool, "to": g.to}
    results |= {"k": spec.lag_steps, "m": spec.validate_steps, "seeds": spec.seeds}
    atomic_write_text(out / "experiment.json", json.dumps(results, indent=2, default=str))
    atomic_write_text(out / "experiment.md", render(results))
    plot_by_step(out / "lag_by_step.png", results)
    return results


def _mode(carry: bool) -> str:
    return "carry" if carry else "fresh"


def _model_of(run: Path) -> ModelConfig:
    raw = OmegaConf.to_container(OmegaConf.load(Path(run) / "config.yaml"))
    return ModelConfig(**raw["model"])


def _fmt(stat: Sequence[float], digits: int = 3) -> str:
    mean, half, n = stat
    if n == 0:
        return "n/a"
    return f"{mean:.{digits}f}" if n < 2 or math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def render(results: dict[str, Any]) -> str:
    k, m = results["k"], results["m"]
    lines = [f"# LAG experiment: k = {k}, m = {m}, seeds {results['seeds']}", "",
             "Per growth and optimizer mode (fresh Adam and warmup, or the source's carried moments, step and data "
             "order), over seeds: the rank correlation of each candidate's val loss at step s with its loss at m, "
             "and the top-1 regret of choosing at s (loss at m of the pick minus the best), mean ± 95% t interval. "
             "LAG's claim: the choice at a short lag k predicts the step-m ranking better than the loss at growth "
             "(s = 0)."]
    for name, g in results["growths"].items():
        lines += ["", f"## {name}: to {' '.join(g['to'])}, pool {g['pool']}"]
        for mode, r in g["modes"].items():
            lines += ["", f"### {mode}", "", "| s | Spearman | Kendall | regret |", "|---|---|---|---|"]
            lines += [f"| {row['step']}{' (k)' if row['step'] == k else ''} | {_fmt(row['spearman'])} | "
                      f"{_fmt(row['kendall'])} | {_fmt(row['regret'], 4)} |" for row in r["by_step"]
                      if row["step"] <= k or row["step"] % max(1, m // 10) == 0]  # every step: the json, the plot
            ratio = mean_ci(r["flops_ratio"])
            reached = sum(math.isfinite(x) for x in r["flops_ratio"])
            settled = settles_at(r["by_step"])
            lines += ["", f"- LAG's pick at k per seed: {r['winners']}; best at m: {r['best_at_m']}",
                      f"- The pick is the step-m best in every seed from s = {settled} on"
                      + (" (only at m itself)" if settled == m else f" (k = {k})"),
                      f"- FLOPs for the best grown run (source included) to reach the from-scratch control's final "
                      f"loss, over the control's own: {_fmt(ratio)} (reached in {reached} of {len(r['flops_ratio'])} "
                      f"seeds; < 1: growth pays)"]
    return "\n".join(lines) + "\n"


def plot_by_step(path: Path, results: dict[str, Any]) -> None:
    """Spearman (left) and top-1 regret (right) against the choosing step s, per growth and mode, seed bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, g in results["growths"].items():
        for mode, r in g["modes"].items():
            steps = [row["step"] for row in r["by_step"]]
            for ax, key in zip(axes, ("spearman", "regret")):
                mean = [row[key][0] for row in r["by_step"]]
                half = [0.0 if math.isnan(row[key][1]) else row[key][1] for row in r["by_step"]]
                line, = ax.plot(steps, mean, marker="o", markersize=2.5, label=f"{name} {mode}")
                ax.fill_between(steps, [a - b for a, b in zip(mean, half)], [a + b for a, b in zip(mean, half)],
                                color=line.get_color(), alpha=0.2)
    axes[0].set_ylim(-1.05, 1.05)  # a correlation; with few seeds its t band is far wider than that
    axes[1].set_ylim(bottom=0.0)  # a regret is never negative
    for ax, ylabel in zip(axes, (f"Spearman with the loss at m = {results['m']}", "top-1 regret (val loss at m)")):
        ax.axvline(results["k"], color="grey", linestyle=":")
        ax.set(xlabel="choosing step s", ylabel=ylabel)
        ax.set_xscale("symlog", linthresh=max(1, results["k"]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)


def main(spec_path: Path, out: Path, growths: Sequence[str] | None, seeds: Sequence[int] | None) -> int:
    """Load, select and run a LAG spec; the exit code (2: a bad spec or a failed run, named)."""
    def work() -> int:
        spec = LagExperiment.load(spec_path)
        spec.select(growths, seeds)
        run_experiment(spec, out)
        print(f"[experiments] report: {Path(out) / 'experiment.md'}", flush=True)
        return 0

    return exit_code(work)
