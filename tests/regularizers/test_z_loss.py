"""z-loss against its definition, mean over real tokens of logsumexp(logits)^2."""
from __future__ import annotations

import math

import pytest
import torch

from regularizers import LossInputs, build_regularizers
from regularizers.z_loss import ZLoss


def inputs(logits: torch.Tensor, mask=None) -> LossInputs:
    tokens = torch.zeros(logits.shape[:2], dtype=torch.long)
    return LossInputs(tokens=tokens, targets=tokens, logits=logits, step=0, mask=mask)


# token 0: logits (0, 0) -> Z = 2; token 1: (ln 3, 0) -> Z = 4 = 2^2
LOGITS = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])
LN2 = math.log(2.0)


def test_value_matches_definition() -> None:
    loss, metrics = ZLoss().penalty(inputs(LOGITS))
    assert loss.item() == pytest.approx((LN2**2 + (2 * LN2) ** 2) / 2)
    assert metrics["log_z"].item() == pytest.approx((LN2 + 2 * LN2) / 2)
    masked, _ = ZLoss().penalty(inputs(LOGITS, mask=torch.tensor([[True, False]])))
    assert masked.item() == pytest.approx(LN2**2)


def test_default_weight_and_no_hidden_states() -> None:
    (reg,) = build_regularizers([{"name": "z_loss"}])
    assert reg.weight == 1e-4 and not reg.needs_hidden_states
    weighted, _ = reg(inputs(LOGITS))
    assert weighted.item() == pytest.approx(1e-4 * 2.5 * LN2**2)


def test_bf16_logits_reduced_in_fp32() -> None:
    logits = (torch.randn(2, 3, 1000) * 30).bfloat16()
    loss, _ = ZLoss().penalty(inputs(logits))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(torch.logsumexp(logits.float(), -1).square().mean().item(), rel=1e-6)


def test_gradient_matches_finite_differences() -> None:
    logits = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    assert torch.autograd.gradcheck(lambda x: ZLoss().penalty(inputs(x, mask))[0], (logits,))
