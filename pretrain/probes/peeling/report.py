"""A peeling job's outputs: bounds.json + bounds.png per checkpoint, summary.png across checkpoints, a text table.

Every file is written atomically (temp file + rename), so a reader never sees a torn one.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

from pretrain.probes.peeling.bounds import Bounds
from storage.io import atomic_save_figure, atomic_write_json

BOUNDS_JSON = "bounds.json"
BOUNDS_PNG = "bounds.png"
SUMMARY_PNG = "summary.png"
_COLORS = colormaps["tab20"]  # 20 distinct colors: rows are (offset, permutation, variant) combinations


def write_outputs(bounds: Bounds, out: Path, summary: bool = True) -> None:
    """bounds.json and bounds.png into `out` (created), then, for a run's jobs/peeling/step_<N>, summary.png of
    every step in its parent."""
    atomic_write_json(out / BOUNDS_JSON, bounds.to_json())
    atomic_save_figure(bars_figure(bounds), out / BOUNDS_PNG, dpi=110, bbox_inches="tight")
    if summary:
        write_summary(out.parent)


def bars_figure(bounds: Bounds) -> Figure:
    """Per window-start layer, grouped bars: the trained model's loss, then every row's bound."""
    held = bounds.holdout_model_loss is not None  # draw what the verdicts use
    model_loss = bounds.holdout_model_loss if held else bounds.model_loss
    labels = list(dict.fromkeys(r.label for r in bounds.rows))
    layers = sorted({r.layer for r in bounds.rows})
    by_key = {(r.layer, r.label): r.holdout_bound if held else r.bound for r in bounds.rows}
    series = [("trained model", {l: model_loss for l in layers})]
    series += [(label, {l: by_key[(l, label)] for l in layers if (l, label) in by_key}) for label in labels]
    width = 0.8 / len(series)
    fig = Figure(figsize=(max(6.0, 1.2 * len(layers) * len(series) ** 0.5), 4.5), layout="constrained")
    ax = fig.subplots()
    for i, (name, values) in enumerate(series):
        xs = [layers.index(l) + (i - (len(series) - 1) / 2) * width for l in values]
        ax.bar(xs, list(values.values()), width, label=name, color="black" if i == 0 else _COLORS(i % 20))
    ax.axhline(model_loss, color="black", lw=0.8, ls="--")
    tags = {v.layer: "".join(tag for tag, on in ((" (removable)", v.lazy), (" (under-opt.)", v.under_optimized))
                             if on) for v in bounds.layers}
    ax.set_xticks(range(len(layers)), [f"l={l}" + tags.get(l, "") for l in layers])
    values = [v for _, vals in series for v in vals.values()]
    pad = 0.05 * (max(values) - min(values)) or 0.05
    ax.set_ylim(min(values) - pad, max(values) + pad)
    ax.set_ylabel(f"LM loss on the {bounds.scored_on} windows")
    ax.set_title(f"peeling bounds R(l, j) vs the trained model{_step_suffix(bounds.meta.get('step'))}")
    ax.legend(fontsize="x-small", ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _step_suffix(step: int | None) -> str:
    return f" (step {step})" if step is not None else ""


def write_summary(peeling_dir: Path) -> Path | None:
    """summary.png: per layer, over training, the model's loss, the layer's removal bound (per variant) and the
    loss with its block refitted on the LM loss (model loss minus the refits' mean gain, best variant): the
    bound-model gap of both verdicts."""
    runs = []
    for path in peeling_dir.glob(f"*/{BOUNDS_JSON}"):
        data = json.loads(path.read_text())
        if data.get("step") is not None:
            runs.append(data)
    if not runs:
        return None
    runs.sort(key=lambda d: d["step"])
    n_layers = max(v["layer"] for d in runs for v in d["layers"])
    fig = Figure(figsize=(3.2 * n_layers, 3.2), layout="constrained")
    axes = fig.subplots(1, n_layers, squeeze=False)[0]
    steps = [d["step"] for d in runs]
    for layer, ax in enumerate(axes, start=1):
        ax.plot(steps, [_reference(d) for d in runs], "k-o", ms=3, label="trained model")
        for variant, points in sorted(_removal_bounds(runs, layer).items()):
            ax.plot(*zip(*points), "-o", ms=3, label=f"removal bound, {variant}")
        if refitted := _refit_losses(runs, layer):
            ax.plot(*zip(*refitted), "--s", ms=3, label="own block refitted on the LM loss")
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("step")
    axes[0].set_ylabel("LM loss (held-out where measured)")
    axes[-1].legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    out = peeling_dir / SUMMARY_PNG
    atomic_save_figure(fig, out, dpi=110, bbox_inches="tight")
    return out


def _reference(data: dict) -> float:
    """The model loss a checkpoint's verdicts compare with: held-out when measured, else calibration."""
    held = data.get("holdout_model_loss")
    return data["model_loss"] if held is None else held


def _score(row: dict) -> float:
    held = row.get("holdout_bound")
    return row["bound"] if held is None else held


def _removal_bounds(runs: list[dict], layer: int) -> dict[str, list[tuple[int, float]]]:
    """variant -> [(step, lowest bound of a row removing `layer`)]."""
    points: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for d in runs:
        best: dict[str, float] = {}
        for r in d["rows"]:
            if layer in r["removes"]:
                best[r["variant"]] = min(best.get(r["variant"], float("inf")), _score(r))
        for variant, bound in best.items():
            points[variant].append((d["step"], bound))
    return points


def _refit_losses(runs: list[dict], layer: int) -> list[tuple[int, float]]:
    """[(step, model loss − the layer's mean refit gain)] over the checkpoints that refitted it."""
    return [(d["step"], _reference(d) - v["refit_gain"]) for d in runs for v in d["layers"]
            if v["layer"] == layer and v.get("refit_gain") is not None]


def format_table(bounds: Bounds) -> str:
    """The rows and the per-layer verdicts as fixed-width text."""
    held = bounds.holdout_model_loss is not None
    head = f"{'l':>3} {'j':>2} {'permutation':<11} {'variant':<7} {'bound':>8} {'-model':>8} " \
           + (f"{'held-out':>8} {'-model':>8} " if held else "") + \
           f"{'fit_mse':>10} {'init_mse':>10} {'removes':<8} {'s':>6}"
    lines = [f"model loss {bounds.model_loss:.4f} on the calibration windows (fitted there: in-sample)"
             + (f", {bounds.holdout_model_loss:.4f} on the held-out windows" if held else ""), head, "-" * len(head)]
    for r in bounds.rows:
        out_of_sample = f"{r.holdout_bound:>8.4f} {r.holdout_bound - bounds.holdout_model_loss:>+8.4f} " if held else ""
        lines.append(f"{r.layer:>3} {r.offset:>2} {r.permutation:<11} {r.variant:<7} {r.bound:>8.4f} "
                     f"{r.bound - bounds.model_loss:>+8.4f} {out_of_sample}{r.fit_mse:>10.3e} {r.init_mse:>10.3e} "
                     f"{','.join(map(str, r.removes)) or '-':<8} {r.seconds:>6.1f}")
    lines.append("")
    lines.append(f"verdicts on the {bounds.scored_on} windows")
    lines.append(f"{'layer':>5} {'removal bound':>13} {'margin':>8} {'refit gain':>10} {'gain bound':>10}  verdicts")
    for v in bounds.layers:
        removal = (f"{'-':>13} {'-':>8}" if v.removal_bound is None
                   else f"{v.removal_bound:>13.4f} {v.margin:>+8.4f}")
        refit = (f"{'-':>10} {'-':>10}" if v.refit_gain is None
                 else f"{v.refit_gain:>+10.4f} {v.refit_margin:>+10.4f}")
        said = [w for w, on in (("REMOVABLE", v.lazy), ("UNDER-OPTIMIZED", v.under_optimized)) if on] or ["ok"]
        why = f" (removal: {v.removal_row})" if v.removal_row else " (no row removes it)"
        lines.append(f"{v.layer:>5} {removal} {refit}  {', '.join(said)}{why}")
    lines.append(f"{bounds.seconds:.1f} s")
    return "\n".join(lines)
