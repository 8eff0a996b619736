"""LAG and gradual-stacking reports: a markdown table a reader can check by eye, the JSON behind it, and a
plot of every candidate's validation curve with the winner highlighted."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from storage.io import atomic_save_figure, atomic_write_text


def write_lag_report(out: Path, summary: dict[str, Any]) -> None:
    """`lag.md`, `lag.json` and `lag.png` in `out` from `experiments.lag_choice.summarize`'s output (+ candidates)."""
    out = Path(out)
    atomic_write_text(out / "lag.json", json.dumps(summary, indent=2, default=str))
    atomic_write_text(out / "lag.md", lag_markdown(summary))
    plot_curves(out / "lag.png", {c["name"]: c["curve"] for c in summary["candidates"]}, summary["winner"],
                [summary["k"]], f"LAG: val loss after growth (lag k={summary['k']})")
    if "by_step" in summary:
        plot_selection(out / "lag_by_step.png", summary["by_step"], summary["k"], summary["m"])


def lag_markdown(summary: dict[str, Any]) -> str:
    """The candidates' table (loss and rank at growth, at k, at m), the choice, and the curves 0..k."""
    k, m, names = summary["k"], summary.get("m"), [c["name"] for c in summary["candidates"]]
    lines = [f"# LAG: {len(names)} candidates, lag k = {k}", "",
             f"Source: `{summary['source']}` (step {summary.get('source_step')}), grown to "
             f"`{' '.join(summary['target'])}`; config `{summary['config']}`"
             + (f" with `{' '.join(summary['overrides'])}`." if summary["overrides"] else "."), "",
             f"**Winner: `{summary['winner']}`** (lowest validation loss at step {k}). Choosing by the loss at "
             f"growth (step 0) would pick `{summary['winner_by_init']}`.", ""]
    header = ["candidate", "function-preserving", "val@0", "rank@0", f"val@{k}", f"rank@{k}"]
    if m is not None:
        header += [f"val@{m}", f"rank@{m}"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in summary["candidates"]:
        n = c["name"]
        row = [f"**{n}**" if n == summary["winner"] else n, str(c["function_preserving"]),
               _f(summary["loss_0"][n]), str(summary["rank_0"][n]), _f(summary["loss_k"][n]), str(summary["rank_k"][n])]
        if m is not None:
            row += [_f(summary["loss_m"][n]), str(summary["rank_m"][n])]
        lines.append("| " + " | ".join(row) + " |")
    if m is not None:
        lines += ["", f"Validation at step {m}: best `{summary['best_at_m']}`. Spearman rank correlation with the "
                  f"step-{m} loss over {len(names)} candidates: step-0 loss ρ = {_f(summary['spearman_0_m'], 3)}, "
                  f"step-{k} loss ρ = {_f(summary['spearman_k_m'], 3)}."]
    if "by_step" in summary:
        lines += ["", f"## Choosing at step s, judged at step {m}", "",
                  f"Rank correlation of the loss at s with the loss at {m}, and the top-1 regret of picking the "
                  f"argmin at s (its loss at {m} minus the best loss at {m}); plot: `lag_by_step.png`.", "",
                  "| s | Spearman ρ | Kendall τ | choice | regret |", "|---|---|---|---|---|"]
        lines += [f"| {r['step']} | {_f(r['spearman'], 3)} | {_f(r['kendall'], 3)} | {r['choice']} | "
                  f"{_f(r['regret'])} |" for r in summary["by_step"]]
    if "continued" in summary:
        lines += ["", f"The winner was continued to step {summary['continued']['steps']}: "
                  f"`{summary['continued']['run']}`."]
    lines += ["", "Lag phase: lr warmup then constant (the trainer cannot stop a run before its schedule ends); "
              "validation/continuation phases follow the config's schedule over their horizon. Every candidate "
              "uses the same config, seed and data order.", "", f"## Validation loss, steps 0..{k}", "",
              "| step | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for step in range(k + 1):
        lines.append(f"| {step} | " + " | ".join(_f(c["curve"].get(str(step), math.nan))
                                                for c in summary["candidates"]) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(path: Path, curves: dict[str, dict[str, float]], highlight: str | None, marks: Sequence[int],
                title: str, xlabel: str = "steps after growth") -> None:
    """Validation loss against step, one line per curve, `highlight` drawn thick, dotted lines at `marks`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        steps = sorted(int(s) for s in curve)
        win = name == highlight
        ax.plot(steps, [curve[str(s)] for s in steps], label=name + (" (winner)" if win else ""),
                linewidth=2.8 if win else 1.2, zorder=3 if win else 2, marker="o" if len(steps) < 40 else None,
                markersize=2.5)
    for step in marks:
        ax.axvline(step, color="grey", linestyle=":")
    ax.set(xlabel=xlabel, ylabel="validation loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)


def plot_selection(path: Path, by_step: Sequence[dict[str, Any]], k: int, m: int) -> None:
    """Spearman and Kendall (left axis) and the top-1 regret (right) of choosing at step s, against s: where a
    phase transition is, the correlations jump and the regret falls to zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in by_step]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("spearman", "Spearman ρ"), ("kendall", "Kendall τ")):
        ax.plot(steps, [r[key] for r in by_step], marker="o", markersize=2.5, label=label)
    ax.set(xlabel="choosing step s", ylabel=f"rank correlation with the loss at step {m}", ylim=(-1.05, 1.05))
    regret = ax.twinx()
    regret.plot(steps, [r["regret"] for r in by_step], color="black", linestyle="--", label="top-1 regret")
    regret.set_ylabel(f"regret (val loss at step {m})")
    ax.axvline(k, color="grey", linestyle=":")
    handles = ax.get_legend_handles_labels()[0] + regret.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)


def _f(value: float, digits: int = 4) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.{digits}f}"
