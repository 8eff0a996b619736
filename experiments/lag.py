"""LAG as an experiment (docs/methods.md §2): sources over seeds, a LAG measurement per growth, seed and optimizer
mode (fresh or carried), a from-scratch control at equal FLOPs, and one report over all of them.

    python -m experiments configs/experiments/lag_horizon.yaml --out runs/lag_horizon [--growths d2_to_4] [--seeds 0,1]

Spec (YAML): `config` (the run config of sources, candidates and scratch runs), `ranks`, `seeds`,
`source_steps`, `choosing_steps` (the steps k LAG is judged choosing at, 0 = at growth, the baseline),
`validate_steps` (the horizon m: every candidate is one run to m under the config's schedule, validated only at
the choosing steps and at m), `carry` (a list of false/true: the optimizer modes to measure), `overrides` (for
every run) and `growths`: name -> {source: overrides of the source run (its shape, its schedule), to: target
shape as for `grow --to`, pool: candidates}. Layout under `out/`:
    sources/<growth>-s<seed>/           the source runs      scratch/<growth>-s<seed>/   the controls
    lag/<growth>-<fresh|carry>-s<seed>/ one `growth lag` experiment each (lag.md, lag.json, lag.png)
    experiment.md experiment.json lag_by_step.png (rewritten after each growth, covering the growths done)
Everything resumes: a finished run or LAG experiment is skipped, an interrupted one continues.
"""
from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from experiments.lag_choice import LagPlan, parse_pool, run_lag
from experiments.lag_stats import HIT_SHARE, flops_to_reach, horizon_table, seed_result
from experiments.launcher import check_user_overrides, claim_experiment, exit_code, train_phase, val_curve
from experiments.spec import KINDS, Kind, check_spec, missing_config, read_spec
from settings.fields import an_integer, at_least, count, each, ruled
from growth import GrowthError
from growth.folders import resolve_target
from launch.command import render_overrides
from model import ModelConfig
from pretrain.config import load_config
from storage.folders import tag_for
from storage.io import atomic_save_figure, atomic_write_text

SPEC_KEYS = {"config", "ranks", "seeds", "source_steps", "choosing_steps", "validate_steps", "carry", "overrides",
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
    seeds: list[int] = ruled(MISSING, each(an_integer()))
    source_steps: int = count()
    choosing_steps: list[int] = ruled(MISSING, each(an_integer(), at_least(0)))
    validate_steps: int = count()
    growths: list[Growth]
    carry: list[bool] = field(default_factory=lambda: [False, True])
    ranks: int = count(2)
    overrides: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "LagExperiment":
        """Read and check a spec; errors name the file and the key."""
        raw = read_spec(path, SPEC_KEYS, {"config", "seeds", "source_steps", "choosing_steps", "validate_steps",
                                          "growths"}, GrowthError)
        growths = []
        for name, g in raw["growths"].items():
            if not isinstance(g, dict) or set(g) != {"source", "to", "pool"}:
                raise GrowthError(f"{path}: growths.{name} must have exactly the keys source, to, pool")
            growths.append(Growth(name, render_overrides(g["source"], f"{path}: growths.{name}.source"),
                                  list(g["to"]), ",".join(g["pool"])))
        spec = cls(config=Path(raw["config"]), seeds=raw["seeds"], source_steps=raw["source_steps"],
                   choosing_steps=raw["choosing_steps"], validate_steps=raw["validate_steps"], growths=growths,
                   carry=[bool(c) for c in raw.get("carry", [False, True])], ranks=raw.get("ranks", 2),
                   overrides=render_overrides(raw.get("overrides"), f"{path}: overrides"))
        check_spec(spec, path, GrowthError)
        spec.check()
        return spec

    def check(self) -> None:
        if problem := missing_config(self.config):
            raise GrowthError(problem)
        ks, m = self.choosing_steps, self.validate_steps
        if ks != sorted(set(ks)) or ks[:1] != [0] or len(ks) < 2 or ks[-1] >= m:
            raise GrowthError(f"choosing_steps={ks} must be increasing, distinct, start at 0 (the loss at growth, the "
                              f"baseline) and have a step k >= 1, all below validate_steps={m}")
        if len(set(self.seeds)) != len(self.seeds):
            raise GrowthError(f"seeds={self.seeds} lists a seed twice")
        check_user_overrides(self.overrides)
        for g in self.growths:
            parse_pool(g.pool)

    @property
    def lag_steps(self) -> int:
        """The first choosing step after growth: the one a `growth lag` run reports its winner at."""
        return self.choosing_steps[1]

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


# ---- sizing (pure) -------------------------------------------------------------------------------------------
def scratch_steps(source: ModelConfig, target: ModelConfig, seq_len: int, source_steps: int, grown_steps: int) -> int:
    """Steps of the target shape trained from scratch that cost what the source plus the grown run cost."""
    f_src, f_tgt = source.flops_per_token(seq_len), target.flops_per_token(seq_len)
    return round(source_steps * f_src / f_tgt) + grown_steps


# ---- the experiment ----------------------------------------------------------------------------------------
def run_experiment(spec: LagExperiment, out: Path) -> dict[str, Any]:
    """Every growth's sources, controls and LAG runs per seed and mode; the report is rewritten after each growth
    (covering the growths finished so far) and returned at the end."""
    out = Path(out)
    load_config(spec.config, spec.overrides)  # before anything is written
    claim_experiment(out, spec.identity())
    results: dict[str, Any] = {"growths": {}, "k": spec.choosing_steps, "m": spec.validate_steps,
                               "seeds": spec.seeds, "hit_share": HIT_SHARE}
    for g in spec.growths:
        per_mode: dict[str, list] = {_mode(c): [] for c in spec.carry}
        for seed in spec.seeds:
            for mode, record in _one_seed(spec, g, seed, out).items():
                per_mode[mode].append(record | {"seed": seed})
        results["growths"][g.name] = {
            "modes": {mode: {"table": horizon_table(records, spec.choosing_steps), "seeds": records}
                      for mode, records in per_mode.items()},
            "pool": g.pool, "to": g.to}
        atomic_write_text(out / "experiment.json", json.dumps(results, indent=2, default=str))
        atomic_write_text(out / "experiment.md", render(results))
        plot_by_step(out / "lag_by_step.png", results)
    return results


def _one_seed(spec: LagExperiment, g: Growth, seed: int, out: Path) -> dict[str, dict[str, Any]]:
    """One seed of a growth: its source, the from-scratch control at equal FLOPs, and a LAG run per optimizer
    mode, each reduced to `seed_result` against the control's final loss. The candidates run the spec's config
    and overrides, not the source's (whose schedule may be its own, e.g. constant for a stable-phase source)."""
    seeded = [*spec.overrides, f"run.seed={seed}"]
    source = out / "sources" / f"{g.name}-s{seed}"
    train_phase(source, spec.config, [*seeded, *g.source], spec.source_steps, final=True, ranks=spec.ranks,
                label=f"{g.name} source s{seed}")
    src_cfg = _model_of(source)
    seq_len = int(OmegaConf.load(source / "config.yaml").data.seq_len)  # resolved: set even where defaulted
    tgt_cfg = resolve_target(src_cfg, g.to)
    n_scratch = scratch_steps(src_cfg, tgt_cfg, seq_len, spec.source_steps, spec.validate_steps)
    scratch = out / "scratch" / f"{g.name}-s{seed}"
    train_phase(scratch, spec.config, [*seeded, *(o if o.startswith("model.") else f"model.{o}" for o in g.to)],
                n_scratch, final=True, ranks=spec.ranks, label=f"{g.name} scratch s{seed} ({n_scratch} steps, equal FLOPs)")
    scratch_curve = val_curve(scratch)
    target_loss = scratch_curve[max(scratch_curve)]
    f_tgt = tgt_cfg.flops_per_token(seq_len)
    scratch_flops = flops_to_reach(scratch_curve, target_loss, 0.0, f_tgt)
    records = {}
    for carry in spec.carry:
        summary = run_lag(LagPlan(
            source=source / "checkpoints" / tag_for(spec.source_steps), target=g.to, pool=parse_pool(g.pool),
            lag_steps=spec.lag_steps, config=spec.config, out=out / "lag" / f"{g.name}-{_mode(carry)}-s{seed}",
            overrides=seeded, ranks=spec.ranks, validate_steps=spec.validate_steps, carry=carry,
            choosing_steps=spec.choosing_steps))
        records[_mode(carry)] = seed_result(summary, spec.choosing_steps, target_loss,
                                            spec.source_steps * src_cfg.flops_per_token(seq_len), f_tgt, scratch_flops)
    return records


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


def _fmt_gain(gain: dict[str, float] | None) -> str:
    if gain is None:
        return "—"
    return f"{gain['diff']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}]"


def render(results: dict[str, Any]) -> str:
    """experiment.md: per growth and optimizer mode, the table per choosing step k and s*."""
    ks, m, share = results["k"], results["m"], results["hit_share"]
    lines = [f"# LAG at a real horizon: m = {m}, choosing steps {ks}, seeds {results['seeds']}", "",
             "Per growth and optimizer mode (fresh Adam and warmup, or the source's carried moments, step and data "
             "order), over seeds. Every candidate is trained to m with the lr decayed to its floor there; LAG's "
             "pick at k is the lowest val loss at k (k = 0: the loss at growth).",
             "- ΔSpearman: Spearman(k, m) − Spearman(0, m), paired by seed, mean [95% t interval]; LAG's claim is "
             "that it is > 0 for a short k.",
             "- regret: val loss at m of the pick at k minus the best at m (mean ± 95% t half-width).",
             f"- hits: the share of seeds whose pick at k is the step-m best; s* = the smallest k from which on "
             f"(every later k too) hits ≥ {share:.0%}.",
             "- FLOPs pick / scratch: FLOPs for LAG's pick at k to reach the from-scratch control's final val loss "
             "(the source, the other candidates' k steps each and the pick's own steps), over the control's; "
             "mean over the seeds that reached it (n reached / seeds). < 1: growth with LAG pays. Grown runs are "
             "validated only at the choosing steps and m, so a pick reaches it at m (ratio ≈ 1 + the choosing cost) "
             "or not at all.",
             "- Δloss vs scratch: the pick's val loss at m minus the control's final one (equal FLOPs but for the "
             "choosing cost; < 0: the grown run ends lower)."]
    for name, g in results["growths"].items():
        lines += ["", f"## {name}: to {' '.join(g['to'])}, pool {g['pool']}"]
        for mode, r in g["modes"].items():
            t = r["table"]
            lines += ["", f"### {mode}", "", "| k | ΔSpearman vs k = 0 | Spearman(k, m) | regret | hits | "
                      "FLOPs pick / scratch | Δloss vs scratch |", "|---|---|---|---|---|---|---|"]
            lines += [f"| {row['k']} | {_fmt_gain(row['spearman_gain'])} | {_fmt(row['spearman'])} | "
                      f"{_fmt(row['regret'], 4)} | {row['hits']:.0%} | {_fmt(row['flops_pick'])} "
                      f"({row['pick_reached']}/{t['seeds']}) | {_fmt(row['gap_pick'], 4)} |" for row in t["rows"]]
            lines += ["", f"- s* = {t['s_star'] if t['s_star'] is not None else f'none (not by k = {ks[-1]})'}",
                      f"- hindsight best at m, FLOPs / scratch: {_fmt(t['flops_best'])} (reached in "
                      f"{t['best_reached']}/{t['seeds']}); Δloss vs scratch {_fmt(t['gap_best'], 4)}",
                      f"- picks per seed at k = {ks[1]}: {[s['pick'][ks[1]] for s in r['seeds']]}; "
                      f"best at m: {[s['best'] for s in r['seeds']]}"]
    return "\n".join(lines) + "\n"


def plot_by_step(path: Path, results: dict[str, Any]) -> None:
    """ΔSpearman with its interval (left), top-1 regret (middle) and the pick's FLOPs over scratch's (right)
    against the choosing step k, one line per growth and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for name, g in results["growths"].items():
        for mode, r in g["modes"].items():
            rows = [row for row in r["table"]["rows"] if row["k"] > 0]
            ks = [row["k"] for row in rows]
            gains = [row["spearman_gain"] or {"diff": math.nan, "low": math.nan, "high": math.nan} for row in rows]
            line, = axes[0].plot(ks, [d["diff"] for d in gains], marker="o", label=f"{name} {mode}")
            axes[0].fill_between(ks, [d["low"] for d in gains], [d["high"] for d in gains], color=line.get_color(),
                                 alpha=0.15)
            axes[1].plot(ks, [row["regret"][0] for row in rows], marker="o", color=line.get_color())
            axes[2].plot(ks, [row["flops_pick"][0] for row in rows], marker="o", color=line.get_color())
            axes[2].axhline(r["table"]["flops_best"][0], color=line.get_color(), linestyle="--", linewidth=0.8)
    labels = ("Spearman(k, m) − Spearman(0, m)", f"top-1 regret (val loss at m = {results['m']})",
              "pick's FLOPs / scratch's (dashed: best)")
    ks = [k for k in results["k"] if k > 0]
    for ax, ylabel in zip(axes, labels):
        ax.set(xlabel="choosing step k", ylabel=ylabel)
        ax.set_xscale("log")
        ax.set_xlim(ks[0] / 1.3, ks[-1] * 1.3)  # also where a panel has no finite point (one seed: no interval)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.0, color="grey", linestyle=":")
    axes[1].set_ylim(bottom=0.0)  # a regret is never negative
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=80)
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


KINDS.add("lag", Kind(run=lambda args: main(args.spec, args.out, args.growths, args.seeds),
                      options=("growths", "seeds"),
                      doc="sources, LAG over a pool of growth operators and from-scratch controls per seed, then "
                          "experiment.md (configs/experiments/lag_cpu.yaml)"))
