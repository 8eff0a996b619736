"""Exact trajectory maps over a run's checkpoints without holding them all in memory.

Each checkpoint is consolidated once (the costly part: any ZeRO stage, via storage.weights), flattened in
group order to an fp32 scratch file and dropped; the Gram matrices are then summed over coordinate chunks,
reading one chunk of every checkpoint at a time (T x chunk floats in memory). The scratch takes 4 bytes per
parameter per checkpoint (a quarter of what a checkpoint with fp32 master + Adam state takes) and is deleted
at the end. Without any scratch, the online sketch (online.py) gives approximate maps.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from pretrain.probes.trajectory.groups import group_params, trajectory_names
from pretrain.probes.trajectory.maps import Trajectory, grams
from storage.weights import load_weights

Layout = list[tuple[str, str, tuple[int, ...]]]  # (group, parameter, shape) in scratch order


def stream_trajectory(checkpoints: Sequence[tuple[int, Path]], granularity: str = "component",
                      chunk: int = 1 << 22, scratch_dir: Path | None = None) -> Trajectory:
    """Trajectory of (step, checkpoint or weights folder) pairs, oldest first, one checkpoint in memory."""
    if len(checkpoints) < 2:
        raise ValueError(f"a trajectory needs at least 2 checkpoints, got {len(checkpoints)}")
    with tempfile.TemporaryDirectory(prefix="trajectory-", dir=scratch_dir) as tmp:
        layout: Layout | None = None
        files = []
        for i, (_, path) in enumerate(tqdm(checkpoints, desc="flatten checkpoints", unit="ckpt")):
            layout, flat = _flatten(path, granularity, layout, checkpoints[0][1])
            files.append(Path(tmp) / f"{i}.f32")
            flat.numpy().tofile(files[-1])
            del flat
        ranges = _group_ranges(layout)
        rows = [np.memmap(f, dtype=np.float32, mode="r") for f in files]
        t = len(rows)
        pg, ug = {}, {}
        for g, (start, end) in tqdm(ranges.items(), desc="gram", unit="group"):
            pg[g] = torch.zeros(t, t, dtype=torch.float64)
            ug[g] = torch.zeros(t - 1, t - 1, dtype=torch.float64)
            for a in range(start, end, chunk):
                x = torch.from_numpy(np.stack([r[a:min(a + chunk, end)] for r in rows]))
                dp, du = grams(x)
                pg[g] += dp
                ug[g] += du
        del rows
    return Trajectory([s for s, _ in checkpoints], pg, ug)


def _flatten(path: Path, granularity: str, layout: Layout | None, first: Path) -> tuple[Layout, torch.Tensor]:
    """(layout, the checkpoint flattened in it). The first checkpoint sets the layout; later ones are read in
    that order, whatever order their state dicts come in (an engine rebuilt over a trainable subset, as at the
    norm-only switch, returns the same parameters in another order)."""
    cfg, sd = load_weights(path)
    names = trajectory_names(sd, cfg.tie_embeddings)
    if layout is None:
        layout = [(g, n, tuple(sd[n].shape)) for g, group in group_params(names, granularity).items() for n in group]
    else:
        _check_same_parameters(layout, {n: tuple(sd[n].shape) for n in names}, path, first)
    return layout, torch.cat([sd[n].detach().reshape(-1).float() for _, n, _ in layout])


def _check_same_parameters(layout: Layout, shapes: dict[str, tuple[int, ...]], path: Path, first: Path) -> None:
    """Refuse a checkpoint whose parameter names or shapes differ from the first one's, naming the first
    parameter that differs."""
    expected = {n: shape for _, n, shape in layout}
    for name in sorted(expected.keys() | shapes.keys()):
        if expected.get(name) != shapes.get(name):
            raise ValueError(
                f"{path} and {first} differ at parameter {name!r} (shape {shapes.get(name, 'absent')} vs "
                f"{expected.get(name, 'absent')}): a trajectory needs the same parameters throughout (for a grown "
                "model, start after the growth step with --start)")


def _group_ranges(layout: Layout) -> dict[str, tuple[int, int]]:
    """Group -> [start, end) in the flat scratch vector (groups are contiguous by construction)."""
    ranges: dict[str, tuple[int, int]] = {}
    pos = 0
    for g, _, shape in layout:
        n = int(np.prod(shape))
        start = ranges[g][0] if g in ranges else pos
        ranges[g] = (start, pos + n)
        pos += n
    return ranges
