"""Weighted mixtures of token corpora: which windows each step trains on, deterministically and resumably.

Every slot of a global batch draws its source from the weights (a generator seeded by (seed, step), so the
assignment is the same on every rank and after any resume); each source then yields its next window from its
own endless sequence of epochs, each epoch a pseudo-random permutation of the source's windows computed
index by index (a Feistel network with cycle-walking): no O(#windows) array, so a 10^10-token corpus costs
no memory. The state is a small dict: the step and each source's (epoch, position).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pretrain.data.errors import DataError

_ROUNDS = 4
_MIX = 0x6D697874  # "mixt": salts the source-assignment generator apart from the permutations'


class Permutation:
    """A bijection of range(n), evaluated for an array of positions: a balanced Feistel network over the
    smallest even number of bits covering n, re-applied to any output >= n until it falls inside."""

    def __init__(self, n: int, seed: tuple[int, ...]):
        self.n = n
        self.half = max(1, math.ceil(math.log2(max(n, 2)) / 2))
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = np.random.default_rng(list(seed)).integers(0, 1 << 62, size=_ROUNDS, dtype=np.uint64)

    def _round(self, right: np.ndarray, key: np.uint64) -> np.ndarray:
        x = (right ^ key) * np.uint64(0x9E3779B97F4A7C15)
        x ^= x >> np.uint64(29)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        return (x ^ (x >> np.uint64(32))) & self.mask

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(self.half), x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._round(right, key)
        return (left << np.uint64(self.half)) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # the round function multiplies modulo 2^64 on purpose
            out = self._feistel(np.asarray(positions, dtype=np.uint64))
            outside = out >= self.n
            while outside.any():
                out[outside] = self._feistel(out[outside])
                outside = out >= self.n
        return out.astype(np.int64)


@dataclass(frozen=True)
class MixtureSource:
    name: str
    windows: int
    weight: float


class MixtureSampler:
    """Yields this rank's micro-batches of global window indices (sources laid end to end) for each step; the
    rank slicing of a global batch is StepSampler's, so the sequence is independent of the number of ranks."""

    def __init__(self, sources: list[MixtureSource], micro_batch_size: int, grad_accum: int, world_size: int,
                 rank: int, seed: int):
        total = sum(s.weight for s in sources)
        if not sources or not total > 0 or any(s.weight < 0 for s in sources):
            raise DataError(f"data.sources weights {[s.weight for s in sources]} must be >= 0 with a positive sum")
        empty = [s.name for s in sources if s.windows == 0 and s.weight > 0]
        if empty:
            raise DataError(f"data.sources {empty} hold no training window of data.seq_len + 1 tokens")
        self.sources, self.seed = sources, seed
        self.probs = np.array([s.weight / total for s in sources])
        self.offsets = np.concatenate([[0], np.cumsum([s.windows for s in sources])[:-1]]).astype(np.int64)
        self.micro, self.grad_accum, self.world_size, self.rank = micro_batch_size, grad_accum, world_size, rank
        self.global_batch = micro_batch_size * grad_accum * world_size
        self.step = 0
        self.streams = [[0, 0] for _ in sources]  # (epoch, position) per source
        self.drawn = [0] * len(sources)  # windows taken from each source so far
        self._perms: dict[tuple[int, int], Permutation] = {}

    def _perm(self, source: int, epoch: int) -> Permutation:
        if (source, epoch) not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k[0] != source}  # one epoch per source
            self._perms[(source, epoch)] = Permutation(self.sources[source].windows, (self.seed, source, epoch))
        return self._perms[(source, epoch)]

    def _take(self, source: int, count: int) -> np.ndarray:
        """The source's next `count` windows (local indices), crossing into new epochs as needed."""
        n, out = self.sources[source].windows, []
        while count:
            epoch, pos = self.streams[source]
            k = min(count, n - pos)
            out.append(self._perm(source, epoch)(np.arange(pos, pos + k)))
            self.streams[source] = [epoch + 1, 0] if pos + k == n else [epoch, pos + k]
            count -= k
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def next_step(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, _MIX, self.step])
        choice = rng.choice(len(self.sources), size=self.global_batch, p=self.probs)
        batch = np.empty(self.global_batch, dtype=np.int64)
        for s in range(len(self.sources)):
            slots = np.flatnonzero(choice == s)
            batch[slots] = self.offsets[s] + self._take(s, len(slots))
            self.drawn[s] += len(slots)
        self.step += 1
        return [batch[(g * self.world_size + self.rank) * self.micro:][:self.micro].copy()
                for g in range(self.grad_accum)]

    def window_key(self) -> tuple[int, int]:
        """Where the next step's windows come from, as the trainer's skip list records it."""
        return self.step, -1

    def realized(self, window: int) -> dict[str, int]:
        """Tokens drawn from each source so far (the mixture as trained, beside the weights as asked)."""
        return {f"data/{s.name}/tokens": n * window for s, n in zip(self.sources, self.drawn)}

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "streams": [list(s) for s in self.streams],
                "drawn": list(self.drawn), "sources": [s.name for s in self.sources]}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; another seed or another list of sources is refused, not silently reset."""
        names = [s.name for s in self.sources]
        if state.get("seed") != self.seed or state.get("sources") != names:
            raise DataError(f"sampler state (seed {state.get('seed')}, sources {state.get('sources')}) does not "
                            f"match this run (seed {self.seed}, sources {names}); resume with the original data")
        self.step, self.drawn = state["step"], list(state["drawn"])
        self.streams = [list(s) for s in state["streams"]]
