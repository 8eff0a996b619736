"""train.on_nonfinite as a component: what each policy does with a skipped step, and what survives a restart
in <run>/faults.json. (tests/pretrain/test_faults.py runs the same policies in launched runs.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pretrain import faults
from pretrain.config import ConfigError
from pretrain.faults import MAX_ROLLBACKS, NonFiniteError, NonFinitePolicy

BAD = {"loss": torch.tensor(float("nan")), "lm_loss": torch.tensor(2.0)}


class Sampler:
    """Windows keyed (epoch 0, position); next_step moves one position on."""

    def __init__(self) -> None:
        self.position = 0

    def window_key(self) -> tuple[int, int]:
        return (0, self.position)

    def next_step(self) -> None:
        self.position += 1


def handle(policy: NonFinitePolicy, window=(0, 4), root=Path("unused")):
    return policy.handle(7, BAD, torch.nn.Linear(2, 2), window, root)


def test_stop_raises_with_a_diagnosis_naming_the_bad_term(tmp_path):
    with pytest.raises(NonFiniteError, match=r"step 7.*'loss': nan.*train.on_nonfinite=stop"):
        handle(NonFinitePolicy("stop", tmp_path, is_main=True))


def test_skip_counts_and_persists_at_once(tmp_path):
    policy = NonFinitePolicy("skip", tmp_path, is_main=True)
    assert handle(policy) is None and handle(policy) is None
    assert json.loads((tmp_path / faults.FAULT_STATE).read_text())["nonfinite_steps"] == 2
    assert NonFinitePolicy("skip", tmp_path, is_main=True).nonfinite_steps == 2  # a requeued run
    assert NonFinitePolicy("skip", tmp_path, is_main=True, resume="never").nonfinite_steps == 0


def test_rollback_returns_the_latest_checkpoint_skips_the_window_and_gives_up_after_max(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoints" / "step_5"
    monkeypatch.setattr(faults, "latest", lambda root: ckpt)
    policy = NonFinitePolicy("rollback", tmp_path, is_main=True)
    for _ in range(MAX_ROLLBACKS):
        assert handle(policy) == ckpt
    with pytest.raises(NonFiniteError, match=f"rolled back to .*step_5 {MAX_ROLLBACKS} times"):
        handle(policy)
    requeued = NonFinitePolicy("rollback", tmp_path, is_main=True)
    assert requeued.rollbacks == {"step_5": MAX_ROLLBACKS} and requeued.skip_windows == {(0, 4)}
    sampler = Sampler()
    sampler.position = 4
    assert requeued.next_window(sampler) == (0, 5)  # the bad window is stepped over


def test_rollback_without_a_checkpoint_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(faults, "latest", lambda root: None)
    with pytest.raises(NonFiniteError, match="no checkpoint to roll back to"):
        handle(NonFinitePolicy("rollback", tmp_path, is_main=True))


def test_only_rank_zero_writes(tmp_path):
    handle(NonFinitePolicy("skip", tmp_path, is_main=False))
    assert not (tmp_path / faults.FAULT_STATE).exists()


def test_a_damaged_fault_file_is_refused_naming_it(tmp_path):
    (tmp_path / faults.FAULT_STATE).write_text('{"skip_windows": [[0]]}')
    with pytest.raises(ConfigError, match=f"{faults.FAULT_STATE} is damaged.*delete it"):
        NonFinitePolicy("rollback", tmp_path, is_main=True)
