"""StepSampler: resume replays nothing, ranks partition the global batch, world size can change on resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain.data import DataError, StepSampler, get_batch


def take(sampler: StepSampler, steps: int) -> list[list[np.ndarray]]:
    return [sampler.next_step() for _ in range(steps)]


def global_steps(samplers: list[StepSampler], steps: int) -> list[np.ndarray]:
    """The global batch of each step, rebuilt in slot order from every rank's micro-batches."""
    out = []
    for _ in range(steps):
        per_rank = [s.next_step() for s in samplers]
        world, accum = len(samplers), len(per_rank[0])
        out.append(np.concatenate([per_rank[r][g] for g in range(accum) for r in range(world)]))
    return out


def test_resume_replays_the_next_batches_exactly():
    # 50 samples, global batch 12: 4 steps per epoch, so k + m = 9 steps cross two epoch boundaries
    a = StepSampler(50, micro_batch_size=3, grad_accum=2, world_size=2, rank=1, seed=7)
    take(a, 5)
    state = a.state_dict()
    expected = take(a, 4)
    b = StepSampler(50, micro_batch_size=3, grad_accum=2, world_size=2, rank=1, seed=7)
    b.load_state_dict(state)
    assert all(np.array_equal(x, y) for xs, ys in zip(expected, take(b, 4)) for x, y in zip(xs, ys))
    assert b.state_dict() == a.state_dict()


def test_ranks_partition_the_global_batch():
    micro, accum, world, seed = 2, 3, 2, 3
    ranks = [StepSampler(40, micro, accum, world, r, seed) for r in range(world)]
    steps = [s.next_step() for s in ranks]
    perm = np.random.default_rng([seed, 0]).permutation(40)
    union = np.concatenate([mb for step in steps for mb in step])
    assert len(union) == len(set(union.tolist())) == micro * accum * world
    assert set(union.tolist()) == set(perm[: micro * accum * world].tolist())
    # micro-step g on rank r holds slots [(g * world + r) * micro, +micro)
    for r in range(world):
        for g in range(accum):
            start = (g * world + r) * micro
            assert np.array_equal(steps[r][g], perm[start:start + micro])


def test_resume_on_a_different_world_size_continues_the_same_sequence():
    two = [StepSampler(64, 4, 1, 2, r, seed=1) for r in range(2)]
    reference = global_steps([StepSampler(64, 4, 1, 2, r, seed=1) for r in range(2)], 7)
    global_steps(two, 3)
    state = two[0].state_dict()
    assert state == two[1].state_dict()  # the state is global: no rank in it
    one = StepSampler(64, 4, grad_accum=2, world_size=1, rank=0, seed=1)
    one.load_state_dict(state)
    assert all(np.array_equal(x, y) for x, y in zip(global_steps([one], 4), reference[3:]))


def test_seed_decides_the_order():
    def first_steps(seed: int) -> np.ndarray:
        return np.concatenate([np.concatenate(s) for s in take(StepSampler(100, 4, 2, 1, 0, seed), 3)])

    assert np.array_equal(first_steps(5), first_steps(5))
    assert not np.array_equal(first_steps(5), first_steps(6))


def test_epoch_rollover_drops_the_tail_and_reshuffles():
    s = StepSampler(10, micro_batch_size=2, grad_accum=2, world_size=1, rank=0, seed=0)  # 2 steps per epoch
    epoch0 = np.concatenate([np.concatenate(x) for x in take(s, 2)])
    assert s.state_dict()["epoch"] == 0 and s.state_dict()["position"] == 8
    epoch1 = np.concatenate(s.next_step())
    assert s.state_dict() == {"epoch": 1, "position": 4, "seed": 0, "samples_seen": 12}
    assert np.array_equal(epoch0, np.random.default_rng([0, 0]).permutation(10)[:8])
    assert np.array_equal(epoch1, np.random.default_rng([0, 1]).permutation(10)[:4])
    assert len(set(epoch0.tolist())) == 8


def test_dataset_smaller_than_a_global_batch_is_refused():
    with pytest.raises(DataError, match=r"7 windows.*global batch of 8"):
        StepSampler(7, micro_batch_size=2, grad_accum=2, world_size=2, rank=0, seed=0)


def test_state_from_another_seed_is_refused():
    state = StepSampler(20, 2, 1, 1, 0, seed=1).state_dict()
    with pytest.raises(DataError, match="seed 1"):
        StepSampler(20, 2, 1, 1, 0, seed=2).load_state_dict(state)


def test_get_batch_gathers_rows_as_long():
    windows = np.arange(30, dtype=np.uint16).reshape(6, 5)
    batch = get_batch(windows, np.array([4, 1]))
    assert batch.dtype == torch.long and batch.shape == (2, 5)
    assert batch.tolist() == [list(range(20, 25)), list(range(5, 10))]
