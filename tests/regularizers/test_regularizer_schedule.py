"""Start step and linear warm-up of a regularizer's weight; nothing is computed while it is 0."""
from __future__ import annotations

import pytest
import torch

from regularizers import LossInputs, Regularizer


class Unit(Regularizer):
    """Penalty 1, so the returned loss is the effective weight."""

    def penalty(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return torch.ones(()), {"seen": torch.ones((), requires_grad=True)}


class Exploding(Regularizer):
    def penalty(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise AssertionError("penalty computed while its weight is 0")


def at(step: int) -> LossInputs:
    tokens = torch.zeros(1, 1, dtype=torch.long)
    return LossInputs(tokens=tokens, targets=tokens, logits=torch.zeros(1, 1, 3), step=step)


@pytest.mark.parametrize(
    # start 10, warm-up 4, weight 2: the k-th active step (k = 1, 2, ...) weighs 2 * min(1, k/4)
    "step, expected",
    [(0, 0.0), (9, 0.0), (10, 0.5), (11, 1.0), (12, 1.5), (13, 2.0), (500, 2.0)],
)
def test_linear_ramp_after_start(step: int, expected: float) -> None:
    reg = Unit(weight=2.0, start_step=10, warmup_steps=4)
    loss, metrics = reg(at(step))
    assert loss.item() == pytest.approx(expected)
    assert metrics["weight"] == pytest.approx(expected)


def test_no_warmup_is_full_weight_from_start() -> None:
    reg = Unit(weight=3.0, start_step=5)
    assert reg(at(4))[0].item() == 0.0 and reg(at(5))[0].item() == 3.0


def test_skipped_before_start_and_when_weight_is_zero() -> None:
    assert Exploding(start_step=3)(at(2))[0].item() == 0.0
    assert Exploding(weight=0.0)(at(100))[0].item() == 0.0


def test_metrics_are_detached() -> None:
    _, metrics = Unit()(at(0))
    assert not metrics["seen"].requires_grad
