"""A seeded CountSketch: a fixed random projection R^n -> R^d that costs O(n), stores nothing of size n.

Coordinate i of a parameter goes to one of d buckets with a random sign. Bucket and sign are drawn from a
generator seeded by (parameter key, i // CHUNK), so the projection is regenerated on the fly chunk by chunk,
and a slice can be sketched knowing only its offset (any partition of a parameter sums to the same sketch).
A dense Gaussian sketch would cost n*d per call (~1 s for the 1.3M-parameter tiny model at d=256);
CountSketch is a sparse Johnson-Lindenstrauss map with the same inner-product variance bound,
Var <Sx, Sy> <= (|x|^2 |y|^2 + <x, y>^2) / d, so cosines keep an error of order (1 - cos^2) / sqrt(d).
Sketches are linear: a group's sketch is the sum of its parameters', an update's the difference of two.
The draws come from the device's generator: a projection is fixed per (seed, device type).
"""
from __future__ import annotations

import zlib

import torch

CHUNK = 1 << 16
"""Coordinates per generator seed: small enough that a tiny parameter costs little, large enough that
seeding is negligible next to drawing."""


def param_key(seed: int, name: str) -> int:
    """A stable 32-bit key per (seed, parameter name): the same in every process (unlike hash())."""
    return zlib.crc32(f"{seed}:{name}".encode())


def signed_buckets(key: int, chunk: int, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Chunk `chunk` of the projection: values in [0, 2 dim), bucket = value mod dim, sign - when >= dim."""
    g = torch.Generator(device=device).manual_seed(zlib.crc32(f"{key}:{chunk}".encode()))
    return torch.randint(0, 2 * dim, (CHUNK,), generator=g, device=device)


def count_sketch(flat: torch.Tensor, key: int, dim: int, start: int = 0) -> torch.Tensor:
    """The float64 sketch [dim] of a flat slice beginning at coordinate `start` of the parameter keyed `key`."""
    out = torch.zeros(2 * dim, dtype=torch.float64, device=flat.device)
    end = start + flat.numel()
    for c in range(start // CHUNK, -(-end // CHUNK)):
        lo, hi = max(start, c * CHUNK), min(end, (c + 1) * CHUNK)
        idx = signed_buckets(key, c, dim, flat.device)[lo - c * CHUNK:hi - c * CHUNK]
        out.index_add_(0, idx, flat[lo - start:hi - start].to(torch.float64))
    return out[:dim] - out[dim:]
