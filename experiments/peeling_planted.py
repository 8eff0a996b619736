"""Peeling against planted truth (docs/methods.md §3): do its two verdicts find the layers we broke, and only those?

    python -m experiments configs/experiments/peeling_planted.yaml --out runs/peeling_planted

Per weight format (`bits`: fp, binary, k-bit; quantization-aware training, the matching peeling variant) and seed:
a model trained with one block of each plant kind (experiments/planting.py) at layers drawn under the seed, the
others normal; one peeling job on it. Per plant kind and verdict (removable: model loss − removal bound;
under-optimized: the refits' gain bound) the AUC of the verdict's margin, planted layers against the normal ones
of the same format (Mann-Whitney U / (n_planted · n_normal), its one-sided p Holm-adjusted over the format's kinds x
verdicts); how many planted layers each verdict flags, and how many normal ones (false flags). Plus one normal fp
run peeled at a series of steps: the bound-model gap per layer over training (series/summary.png).
Layout: cells/<format>-s<seed>/{bounds.json, plants.json}, series/step_<N>/, planted.{md,json,png}. Finished
cells and steps are skipped on a rerun.
"""
from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy import stats as sps

from experiments import stats
from experiments.errors import ExperimentError
from experiments.planting import place_plants, plant_kinds, train_planted
from experiments.spec import KINDS, Kind, check_spec, read_spec
from settings.fields import an_integer, between, check_value, count, each, inside, ruled, strictly_between
from launch.command import render_overrides
from model import Llama
from pretrain.config import Config, load_config
from pretrain.data import prepare_data
from pretrain.probes.peeling.bounds import compute_bounds
from pretrain.probes.peeling.job import calibration_windows
from pretrain.probes.peeling.report import BOUNDS_JSON, write_outputs
from pretrain.probes.peeling.settings import PeelingError, PeelingSettings, check_settings
from storage.io import atomic_save_figure, atomic_write_json, atomic_write_text, claim_output_folder

MARKER = ".growlm-peeling-planted"
SPEC_KEYS = {"base", "overrides", "seeds", "freeze_step", "alphas", "bits", "series", "peeling", "targets", "alpha"}
TARGETS = ("auc", "false_flags")
"""The planted report's pre-registered criteria: the verdict's AUC at least `auc`, the share of normal layers
flagged at most `false_flags`."""
VERDICTS = {"removable": "margin", "under_optimized": "refit_margin"}
"""verdict -> the LayerVerdict field whose value is its margin (flagged above the tolerance / at or above -tol)."""


@dataclass
class PlantedSpec:
    config: Config
    seeds: list[int] = ruled(MISSING, each(an_integer()))
    freeze_step: int = count()
    alphas: list[float] = ruled(MISSING, each(strictly_between(0, 1)))
    """The scales of the `scaled_<a>` plants: a layer's update scaled by a < 1."""
    bits: list[Optional[int]] = ruled(MISSING, each(an_integer(), between(1, 16)))
    """null: full precision; 1: binary; 2..16: k-bit."""
    series_seed: int = ruled(MISSING, an_integer())
    series_steps: list[int] = ruled(MISSING, each(an_integer()))
    peeling: dict[str, Any]
    targets: dict[str, float]
    """The pre-registered success criteria: {auc, false_flags}, each in [0, 1]."""
    alpha: float = inside(0.05, 0, 0.5)

    @classmethod
    def load(cls, path: Path) -> "PlantedSpec":
        raw = read_spec(path, SPEC_KEYS, SPEC_KEYS - {"alpha", "overrides"})
        config = load_config(raw["base"], render_overrides(raw.get("overrides") or {}, f"{path}: overrides"))
        series = raw["series"]
        if not isinstance(series, dict) or set(series) != {"seed", "steps"}:
            raise ExperimentError(f"{path}: series must have exactly the keys seed, steps")
        targets = raw["targets"]
        if not isinstance(targets, dict) or set(targets) != set(TARGETS):
            raise ExperimentError(f"{path}: targets={targets!r} must have exactly the keys {list(TARGETS)}")
        spec = cls(config, raw["seeds"], raw["freeze_step"], raw["alphas"], raw["bits"], series["seed"],
                   series["steps"], dict(raw["peeling"]), targets, raw.get("alpha", 0.05))
        check_spec(spec, path)
        for key, value in targets.items():
            try:
                check_value(f"targets.{key}", value, between(0, 1))
            except ValueError as err:
                raise ExperimentError(f"{path}: {err}") from None
        if not spec.freeze_step < config.train.steps:
            raise ExperimentError(f"{path}: freeze_step={spec.freeze_step} must lie inside the run "
                                  f"(0 < step < train.steps={config.train.steps})")
        for bits in spec.bits:
            try:
                check_settings(spec.settings(bits), config.model.n_layers)
            except (PeelingError, TypeError) as err:
                raise ExperimentError(f"{path}: peeling: {err}") from None
        if not spec.series_steps or not all(0 < s <= config.train.steps for s in spec.series_steps):
            raise ExperimentError(f"{path}: series.steps={spec.series_steps} must be steps of the run "
                                  f"(1..train.steps={config.train.steps})")
        try:
            place_plants(plant_kinds(spec.alphas), config.model.n_layers, 0)  # enough layers for every plant
        except ValueError as err:
            raise ExperimentError(f"{path}: {err}") from None
        return spec

    def settings(self, bits: Optional[int]) -> PeelingSettings:
        """The spec's peeling settings in the variant matching `bits`."""
        return PeelingSettings(**{**self.peeling, "variants": [variant_of(bits)]})


def variant_of(bits: Optional[int]) -> str:
    return "fp" if bits is None else "binary" if bits == 1 else f"{bits}bit"


def peel(model: Llama, windows: torch.Tensor, settings: PeelingSettings) -> Any:
    """Bounds on the first `calib_windows` of `windows`, scored on the next `holdout_windows`."""
    return compute_bounds(model, windows[:settings.calib_windows], settings,
                          holdout=windows[settings.calib_windows:settings.calib_windows + settings.holdout_windows])


def run_cell(spec: PlantedSpec, bits: Optional[int], seed: int, train: np.ndarray, windows: torch.Tensor,
             out: Path) -> None:
    """One planted model trained and peeled (skipped when its bounds.json exists)."""
    if (out / BOUNDS_JSON).is_file():
        return
    plants = place_plants(plant_kinds(spec.alphas), spec.config.model.n_layers, seed)
    model = train_planted(spec.config, plants, spec.freeze_step, train, seed, bits)
    bounds = peel(model, windows, spec.settings(bits))
    bounds.meta = {"seed": seed, "bits": bits, "step": None}
    atomic_write_json(out / "plants.json", {str(k): v for k, v in plants.items()})
    write_outputs(bounds, out, summary=False)


def run_series(spec: PlantedSpec, train: np.ndarray, windows: torch.Tensor, out: Path) -> None:
    """A normal fp run (no plants) peeled at every `series_steps` step."""
    if all((out / f"step_{s}" / BOUNDS_JSON).is_file() for s in spec.series_steps):
        return

    def at(step: int, model: Llama) -> None:
        if step in spec.series_steps:
            snapshot = Llama(spec.config.model)
            snapshot.load_state_dict(model.state_dict())
            bounds = peel(snapshot.eval(), windows, spec.settings(None))
            bounds.meta = {"seed": spec.series_seed, "step": step}
            write_outputs(bounds, out / f"step_{step}")

    train_planted(spec.config, {}, spec.freeze_step, train, spec.series_seed, on_step=at)


def cell_rows(cells: Path) -> list[dict]:
    """One row per (format, seed, layer): its plant ('normal' when none) and both verdicts' margins and flags."""
    rows = []
    for path in sorted(cells.glob(f"*/{BOUNDS_JSON}")):
        data, plants = json.loads(path.read_text()), json.loads((path.parent / "plants.json").read_text())
        variant = data["settings"]["variants"][0]
        for v in data["layers"]:
            rows.append({"format": variant, "seed": data["seed"], "layer": v["layer"],
                         "plant": plants.get(str(v["layer"]), "normal"),
                         "removable": v["margin"], "removable_flag": v["lazy"],
                         "under_optimized": v["refit_margin"], "under_optimized_flag": v["under_optimized"]})
    return rows


def auc(planted: list[float], normal: list[float]) -> tuple[float, float]:
    """AUC of the margin, planted above normal (ties count half), and the one-sided Mann-Whitney p."""
    if not planted or not normal:
        return math.nan, math.nan
    res = sps.mannwhitneyu(planted, normal, alternative="greater")
    return float(res.statistic) / (len(planted) * len(normal)), float(res.pvalue)


def analyse(rows: list[dict], kinds: list[str]) -> dict[str, list[dict]]:
    """format -> one entry per (plant kind, verdict): AUC, Holm-adjusted p over the format's family, detection."""
    out = {}
    for fmt in dict.fromkeys(r["format"] for r in rows):
        mine = [r for r in rows if r["format"] == fmt]
        normal = [r for r in mine if r["plant"] == "normal"]
        family = []
        for kind in kinds:
            planted = [r for r in mine if r["plant"] == kind]
            for verdict in VERDICTS:
                pos = [r[verdict] for r in planted if r[verdict] is not None]
                neg = [r[verdict] for r in normal if r[verdict] is not None]
                area, p = auc(pos, neg)
                family.append({"plant": kind, "verdict": verdict, "auc": area, "p": p, "n_planted": len(pos),
                               "n_normal": len(neg), "flagged": sum(r[f"{verdict}_flag"] for r in planted),
                               "false_flags": sum(r[f"{verdict}_flag"] for r in normal)})
        for entry, adjusted in zip(family, stats.holm([e["p"] for e in family])):
            entry["p_holm"] = adjusted
        out[fmt] = family
    return out


def report(spec: PlantedSpec, table: dict[str, list[dict]]) -> str:
    auc_target, flag_target = spec.targets["auc"], spec.targets["false_flags"]
    lines = ["# Peeling against planted truth", "",
             f"Seeds {spec.seeds}; {spec.config.model.n_layers} layers; plants per model: "
             f"{', '.join(plant_kinds(spec.alphas))} (frozen_early from step {spec.freeze_step} of "
             f"{spec.config.train.steps}). AUC: a verdict's margin on planted layers against the same format's normal "
             f"layers (1 = every planted layer above every normal one; 0.5 = chance); p: one-sided Mann-Whitney, "
             f"Holm-adjusted over each format's {2 * len(plant_kinds(spec.alphas))} tests. Targets (fixed in the "
             f"spec): AUC >= {auc_target:g} for frozen_init and identity, false flags <= {flag_target:.0%} of "
             "normal layers.", ""]
    for fmt, family in table.items():
        lines += [f"## {fmt}", "", "| plant | verdict | AUC | p (Holm) | planted flagged | normal flagged |",
                  "|---|---|---|---|---|---|"]
        for e in family:
            lines.append(f"| {e['plant']} | {e['verdict']} | {e['auc']:.2f} | {e['p_holm']:.3g} | "
                         f"{e['flagged']}/{e['n_planted']} | {e['false_flags']}/{e['n_normal']} |")
        for verdict in VERDICTS:
            e = next(x for x in family if x["verdict"] == verdict)
            rate = e["false_flags"] / e["n_normal"] if e["n_normal"] else math.nan
            met = "met" if rate <= flag_target else "NOT met"
            lines.append(f"\n{verdict}: false flags {e['false_flags']}/{e['n_normal']} = {rate:.0%} ({met})")
        for kind in ("frozen_init", "identity"):
            best = max((e for e in family if e["plant"] == kind), key=lambda e: e["auc"])
            met = "met" if best["auc"] >= auc_target else "NOT met"
            lines.append(f"\n{kind}: best AUC {best['auc']:.2f} ({best['verdict']}), target {met}")
        lines.append("")
    return "\n".join(lines)


def plot(table: dict[str, list[dict]], kinds: list[str]) -> Figure:
    fig = Figure(figsize=(4.2 * len(table), 3.6), layout="constrained")
    axes = fig.subplots(1, len(table), squeeze=False)[0]
    for ax, (fmt, family) in zip(axes, table.items()):
        for i, verdict in enumerate(VERDICTS):
            values = [next(e["auc"] for e in family if e["plant"] == k and e["verdict"] == verdict) for k in kinds]
            ax.bar([x + (i - 0.5) * 0.4 for x in range(len(kinds))], values, 0.4, label=verdict)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xticks(range(len(kinds)), kinds, rotation=35, ha="right", fontsize="small")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{fmt}: AUC of each verdict's margin")
    axes[0].set_ylabel("AUC, planted vs normal layers")
    axes[-1].legend(fontsize="small")
    return fig


def main(spec_path: Path, out: Path) -> int:
    spec = PlantedSpec.load(spec_path)
    claim_output_folder(out, MARKER)
    train = np.asarray(prepare_data(spec.config.data, spec.config.model.vocab_size, seed=spec.config.run.seed).train)
    settings = spec.settings(None)  # every format's peeling reads the same windows: read them once
    windows = calibration_windows(spec.config, spec.config.model, settings.calib_windows + settings.holdout_windows)
    for bits in spec.bits:
        for seed in spec.seeds:
            print(f"planted model: {variant_of(bits)}, seed {seed}", flush=True)
            run_cell(spec, bits, seed, train, windows, out / "cells" / f"{variant_of(bits)}-s{seed}")
    print(f"series: steps {spec.series_steps}", flush=True)
    run_series(spec, train, windows, out / "series")
    kinds = plant_kinds(spec.alphas)
    table = analyse(cell_rows(out / "cells"), kinds)
    atomic_write_json(out / "planted.json", table)
    atomic_write_text(out / "planted.md", report(spec, table))
    atomic_save_figure(plot(table, kinds), out / "planted.png", dpi=110)
    print((out / "planted.md").read_text())
    return 0


KINDS.add("planted", Kind(run=lambda args: main(args.spec, args.out), options=(),
                          doc="models with planted layers peeled, then planted.md "
                              "(configs/experiments/peeling_planted.yaml)"))
