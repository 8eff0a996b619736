"""Trajectory maps (docs/methods.md §4): how aligned the checkpoints of one parameter group are, and their updates.

For checkpoints theta_1..theta_T of a group, the parameter map is C_ij = cos(theta_i, theta_j) and the update
map the same for u_i = theta_{i+1} - theta_i. Both come from Gram matrices of dot products, which add up over
any split of the coordinates: that is what lets `stream.py` and the online sketch build them piece by piece.
The mean directional similarity MDS = mean_{i != j} C_ij summarises a map (1: a straight line; ~0: orthogonal
steps, i.e. exploration). Q/K/V heterogeneity of layer l is the spread max - min of the MDS of its q, k and v
groups: 0 when the three move alike, large when one projection follows its own course (the paper sees this in
middle attention layers).
A frozen stretch (a group outside the trainable subset after the norm-only switch) has updates of exactly zero
norm: they have no direction, so they are left out of that group's update map (and listed as `zero_updates`)
rather than filling it with NaN cosines.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from pretrain.probes.trajectory.groups import layer_component


def grams(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Gram of the rows of x [T, n], Gram of their successive differences), in float64 so sums stay exact."""
    x = x.to(torch.float64)
    d = x[1:] - x[:-1]
    return x @ x.T, d @ d.T


def cosine_map(gram: torch.Tensor) -> torch.Tensor:
    """C_ij = G_ij / (|v_i| |v_j|); NaN where a vector is zero (e.g. the update of a frozen group)."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    denom = torch.outer(norms, norms)
    c = (gram / denom).clamp(-1.0, 1.0)
    return c.masked_fill(denom == 0, math.nan)


def mds(c: torch.Tensor) -> float:
    """Mean of the off-diagonal entries (NaN ones left out); NaN when there are none."""
    off = c[~torch.eye(len(c), dtype=torch.bool)]
    off = off[~off.isnan()]
    return off.mean().item() if off.numel() else math.nan


def qkv_heterogeneity(mds_by_group: Mapping[str, float | None]) -> dict[int, float]:
    """Per layer: max - min of the MDS of its q, k, v groups (layers missing one of them, or with an undefined
    MDS, are skipped)."""
    by_layer: dict[int, dict[str, float]] = {}
    for group, value in mds_by_group.items():
        lc = layer_component(group)
        if lc and lc[1] in ("q", "k", "v") and value is not None and not math.isnan(value):
            by_layer.setdefault(lc[0], {})[lc[1]] = value
    return {l: max(v.values()) - min(v.values()) for l, v in sorted(by_layer.items()) if len(v) == 3}


@dataclass
class Trajectory:
    """Gram matrices of one run's trajectory, per group: everything the maps and summaries derive from."""

    steps: list[int]
    param_grams: dict[str, torch.Tensor]
    update_grams: dict[str, torch.Tensor]

    def param_maps(self) -> dict[str, torch.Tensor]:
        return {g: cosine_map(v) for g, v in self.param_grams.items()}

    def moving(self, group: str) -> list[int]:
        """Indices of the group's updates that moved it (a frozen group's updates are exactly zero)."""
        return (self.update_grams[group].diagonal() > 0).nonzero().flatten().tolist()

    def update_maps(self) -> dict[str, torch.Tensor]:
        """Per group, the cosine map of its moving updates only (see `update_steps` for their steps)."""
        out = {}
        for g, gram in self.update_grams.items():
            idx = torch.tensor(self.moving(g), dtype=torch.long)
            out[g] = cosine_map(gram[idx][:, idx])
        return out

    def update_steps(self) -> dict[str, list[int]]:
        """Per group, the step each row of its update map starts at."""
        return {g: [self.steps[i] for i in self.moving(g)] for g in self.update_grams}

    def summary(self) -> dict:
        """{"groups": {g: {mds_params, mds_updates, zero_updates}}, "qkv": {layer: {params, updates}}}: JSON-ready,
        an undefined MDS (fewer than two moving updates) is None."""
        mp = {g: _defined(mds(c)) for g, c in self.param_maps().items()}
        mu = {g: _defined(mds(c)) for g, c in self.update_maps().items()}
        hp, hu = qkv_heterogeneity(mp), qkv_heterogeneity(mu)
        moving = {g: set(self.moving(g)) for g in self.update_grams}
        return {
            "steps": self.steps,
            "groups": {g: {"mds_params": mp[g], "mds_updates": mu[g],
                           "zero_updates": [s for i, s in enumerate(self.steps[:-1]) if i not in moving[g]]}
                       for g in mp},
            "qkv": {l: {"params": hp[l], "updates": hu.get(l)} for l in hp},
        }


def _defined(value: float) -> float | None:
    return None if math.isnan(value) else value


def trajectory_of(steps: list[int], vectors: Mapping[str, torch.Tensor]) -> Trajectory:
    """The in-memory trajectory: `vectors[group]` is [T, n], one flattened checkpoint (or sketch) per row."""
    pg, ug = {}, {}
    for g, x in vectors.items():
        if len(x) != len(steps):
            raise ValueError(f"group {g}: {len(x)} rows for {len(steps)} steps")
        pg[g], ug[g] = grams(x)
    return Trajectory(list(steps), pg, ug)
