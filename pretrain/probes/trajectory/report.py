"""Trajectory maps of a run (docs/methods.md §4): per-group heat-maps of cos(theta_i, theta_j) and of the update
cosines, and a summary table (MDS per group, Q/K/V heterogeneity per layer).

Exact maps stream over the run's complete checkpoints (one in memory at a time; any ZeRO stage); with
--from-sketches they come from the online sketch (<run>/jobs/trajectory/sketches.pt; monitors.trajectory.every
> 0), which needs no checkpoints and has every sketched step.

    python -m pretrain.probes.trajectory.report runs/tiny --out runs/tiny/jobs/trajectory/report
    python -m pretrain.probes.trajectory.report runs/tiny --out /tmp/rep --from-sketches --start 100
Writes params.png, updates.png, summary.md, summary.json under --out.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from settings.errors import UserError, user_errors
from settings.fields import above, at_least, flag
from pretrain.probes.trajectory.groups import layer_component
from pretrain.probes.trajectory.maps import Trajectory, mds
from pretrain.probes.trajectory.online import SKETCH_FILE, load_sketches, sketch_trajectory
from pretrain.probes.trajectory.settings import GRANULARITIES
from pretrain.probes.trajectory.stream import stream_trajectory
from storage.folders import complete_checkpoints
from storage.io import atomic_save_figure, atomic_write_text, check_output_folder, claim_output_folder, file_in_the_way

MARKER = ".growlm-trajectory-report"
"""Marks an --out folder this command made (re-running it there replaces its files)."""

COMPONENTS = ("q", "k", "v", "o", "mlp", "norms")


def _panel_order(group: str) -> tuple[int, int]:
    layer, component = layer_component(group)
    return layer, COMPONENTS.index(component) if component in COMPONENTS else len(COMPONENTS)


def plot_maps(maps: dict[str, torch.Tensor], steps: Mapping[str, list[int]], title: str, path: Path,
              diverging: bool, notes: Mapping[str, str] | None = None) -> None:
    """One heat-map per group on a grid (a row per layer at component granularity), one shared colour scale;
    `steps[group]` labels the rows of that group's map, `notes[group]` is added to its title."""
    layered = sorted((g for g in maps if layer_component(g)), key=_panel_order)
    order = layered + [g for g in maps if g not in layered]
    ncols = len({layer_component(g)[1] for g in layered}) if layered else min(len(order), 4)
    nrows = math.ceil(len(order) / ncols)
    if diverging:
        vmin, vmax, cmap = -1.0, 1.0, "RdBu_r"
    else:
        finite = torch.cat([m[~m.isnan()] for m in maps.values()])
        vmin, vmax, cmap = (finite.min().item() if finite.numel() else 0.0), 1.0, "viridis"
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols + 1, 2.3 * nrows + 0.6), squeeze=False,
                             layout="constrained")
    im = None
    for ax, g in zip(axes.flat, order):
        c, labels = maps[g], steps[g]
        if len(c) == 0:
            ax.set_title(g, fontsize=9)
            ax.text(0.5, 0.5, "no moving updates", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        im = ax.imshow(c.numpy(), vmin=vmin, vmax=vmax, cmap=cmap, interpolation="nearest")
        value = mds(c)
        note = f"\n{notes[g]}" if notes and notes.get(g) else ""
        ax.set_title(f"{g}  MDS {'n/a' if math.isnan(value) else f'{value:.2f}'}{note}", fontsize=9)
        ticks = list(range(0, len(labels), max(1, len(labels) // 4)))
        ax.set_xticks(ticks, [str(labels[t]) for t in ticks], fontsize=6)
        ax.set_yticks(ticks, [str(labels[t]) for t in ticks], fontsize=6)
    for ax in list(axes.flat)[len(order):]:
        ax.axis("off")
    fig.suptitle(title)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6)
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _zero_updates(steps: list[int], all_starts: list[int]) -> str:
    """'none', 'from step S' (a frozen tail, as after the norm-only switch) or the list of steps."""
    if not steps:
        return "none"
    if steps == all_starts[len(all_starts) - len(steps):]:
        return f"from step {steps[0]}"
    return ", ".join(map(str, steps))


def summary_markdown(summary: dict, source: str) -> str:
    starts = summary["steps"][:-1]
    lines = [f"# Trajectory summary ({source})", "",
             f"Steps {summary['steps'][0]}..{summary['steps'][-1]} ({len(summary['steps'])} points). "
             "MDS = mean off-diagonal cosine of the map (docs/methods.md §4); update i = theta_(i+1) - theta_i. "
             "Updates of zero norm (a frozen group, e.g. after the norm-only switch) have no direction: they are "
             "left out of the update maps and listed here; n/a: fewer than two moving updates.", "",
             "| group | MDS params | MDS updates | zero updates |", "|---|---:|---:|---|"]
    lines += [f"| {g} | {_num(v['mds_params'])} | {_num(v['mds_updates'])} | {_zero_updates(v['zero_updates'], starts)} |"
              for g, v in summary["groups"].items()]
    if summary["qkv"]:
        groups = summary["groups"]
        lines += ["", "Q/K/V heterogeneity = max - min over {q, k, v} of the layer's MDS (0: they move alike).", "",
                  "| layer | MDS upd q | MDS upd k | MDS upd v | heterogeneity params | heterogeneity updates |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for layer, h in summary["qkv"].items():
            q, k, v = (_num(groups[f"L{layer}.{c}"]["mds_updates"]) for c in "qkv")
            lines.append(f"| {layer} | {q} | {k} | {v} | {_num(h['params'])} | {_num(h['updates'])} |")
    return "\n".join(lines) + "\n"


def load_trajectory(args: argparse.Namespace) -> tuple[Trajectory, str]:
    if args.from_sketches:
        path = args.run_dir / SKETCH_FILE
        if not path.is_file():
            raise UserError(f"{path} does not exist; train with monitors.trajectory.every > 0, or drop --from-sketches")
        traj, source = sketch_trajectory(load_sketches(path), args.granularity, args.start), f"sketches, {path}"
    else:
        ckpts = [(s, d) for s, d in complete_checkpoints(args.run_dir / "checkpoints") if s >= args.start]
        if len(ckpts) < 2:
            raise UserError(f"{args.run_dir / 'checkpoints'} has {len(ckpts)} complete checkpoints at step >= "
                            f"{args.start}; a trajectory needs 2 (raise checkpoint.keep, or use --from-sketches)")
        traj = stream_trajectory(ckpts, args.granularity, args.chunk, args.scratch)
        source = f"exact, {len(ckpts)} checkpoints"
    return traj, source


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a run directory (holds checkpoints/ and jobs/)")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs and the summary")
    p.add_argument("--from-sketches", action="store_true", help="use the online sketch instead of checkpoints")
    p.add_argument("--granularity", choices=GRANULARITIES, default="component", help="parameter grouping")
    p.add_argument("--start", type=flag(int, at_least(0)), default=0,
                   help="ignore checkpoints / sketches before this step")
    p.add_argument("--chunk", type=flag(int, above(0)), default=1 << 22,
                   help="coordinates per Gram chunk (memory: T x chunk)")
    p.add_argument("--scratch", type=Path, default=None, help="folder for the temporary flattened checkpoints")
    args = p.parse_args(argv)
    return user_errors(lambda: report(args))


def report(args: argparse.Namespace) -> int:
    """The maps, the summary and its markdown for one run, into --out (refused unless this command made it)."""
    check_output_folder(args.out, MARKER)
    if args.scratch is not None and (blocker := file_in_the_way(args.scratch)) is not None:
        raise UserError(f"--scratch {args.scratch}: {blocker} is a file; give a folder for the temporary files")
    traj, source = load_trajectory(args)
    claim_output_folder(args.out, MARKER)
    params = traj.param_maps()
    plot_maps(params, {g: traj.steps for g in params}, f"cos(theta_i, theta_j) — {source}", args.out / "params.png",
              False)
    written = ["params.png"]
    summary = traj.summary()
    if len(traj.steps) >= 3:
        zero = {g: v["zero_updates"] for g, v in summary["groups"].items()}
        notes = {g: f"zero updates: {_zero_updates(z, traj.steps[:-1])}" for g, z in zero.items() if z}
        plot_maps(traj.update_maps(), traj.update_steps(), f"cos(update_i, update_j), update i starts at the step "
                  f"shown — {source}", args.out / "updates.png", True, notes)
        written.append("updates.png")
    else:
        print(f"note: {len(traj.steps)} trajectory points: an update map needs at least 3 (two updates to compare); "
              "wrote the parameter map only")
    atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    atomic_write_text(args.out / "summary.md", summary_markdown(summary, source))
    print(summary_markdown(summary, source))
    print(f"wrote {', '.join(str(args.out / f) for f in [*written, 'summary.md', 'summary.json'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
