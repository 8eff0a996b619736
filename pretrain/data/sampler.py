"""Deterministic, resumable, rank-sharded sample indices: one call per optimizer step.

Each epoch visits a permutation of range(num_samples) drawn from np.random.default_rng([seed, epoch]).
An optimizer step consumes the next global batch of micro_batch_size * grad_accum * world_size samples;
micro-step g on rank r takes global-batch slots [(g * world + r) * micro, +micro). An epoch's tail shorter
than a global batch is dropped and the next epoch begins, so every step is full-sized.

The state is global (epoch, position in the epoch's permutation, seed, samples seen) and knows nothing of
ranks, so a run resumed on a different number of ranks with the same global batch (e.g. 2 ranks x 1
micro-step -> 1 rank x 2 micro-steps) continues the exact same sample sequence.
"""
from __future__ import annotations

import numpy as np
import torch

from pretrain.data.errors import DataError


class StepSampler:
    """Yields this rank's micro-batches of window indices for each optimizer step."""

    def __init__(self, num_samples: int, micro_batch_size: int, grad_accum: int, world_size: int, rank: int,
                 seed: int) -> None:
        for name, value in (("micro_batch_size", micro_batch_size), ("grad_accum", grad_accum),
                            ("world_size", world_size)):
            if value < 1:
                raise DataError(f"{name} must be >= 1, got {value}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside [0, world_size={world_size})")
        self.global_batch = micro_batch_size * grad_accum * world_size
        if num_samples < self.global_batch:
            raise DataError(
                f"the dataset has {num_samples} windows, fewer than one global batch of {self.global_batch} "
                f"(micro_batch_size {micro_batch_size} x grad_accum {grad_accum} x world_size {world_size}); "
                f"add data, lower data.seq_len or shrink the batch"
            )
        self.num_samples, self.micro, self.grad_accum = num_samples, micro_batch_size, grad_accum
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.epoch = self.position = self.samples_seen = 0
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _permutation(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
            self._perm_epoch = self.epoch
        return self._perm

    def next_step(self) -> list[np.ndarray]:
        """This rank's grad_accum micro-batches (index arrays of micro_batch_size) for the next step."""
        if self.position + self.global_batch > self.num_samples:
            self.epoch, self.position = self.epoch + 1, 0
        batch = self._permutation()[self.position:self.position + self.global_batch]
        self.position += self.global_batch
        self.samples_seen += self.global_batch
        return [batch[(g * self.world_size + self.rank) * self.micro:][:self.micro].copy()
                for g in range(self.grad_accum)]

    def window_key(self) -> tuple[int, int]:
        """Where the next step's windows come from, as the trainer's skip list records it."""
        return self.epoch, self.position

    def state_dict(self) -> dict:
        """Global position in the sample sequence; identical on every rank."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "samples_seen": self.samples_seen}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; a different seed or an out-of-range position is refused, not silently reset."""
        if state["seed"] != self.seed:
            raise DataError(f"sampler state has seed {state['seed']} but this sampler was built with seed "
                            f"{self.seed}; resume with the original seed to continue the same data order")
        if not 0 <= state["position"] <= self.num_samples:
            raise DataError(f"sampler state position {state['position']} is outside this dataset of "
                            f"{self.num_samples} windows; was the data changed since the checkpoint?")
        self.epoch, self.position, self.samples_seen = state["epoch"], state["position"], state["samples_seen"]


def get_batch(windows: np.ndarray, indices: np.ndarray) -> torch.Tensor:
    """Gather windows into a LongTensor [len(indices), seq_len + 1] (inputs [:, :-1], targets [:, 1:])."""
    return torch.from_numpy(windows[np.asarray(indices)].astype(np.int64))
