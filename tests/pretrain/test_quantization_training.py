"""Quantization-aware training through the real launcher: 2 CPU ranks, ZeRO-1 and ZeRO-3 train the same
low-bit model, and what readers get from the checkpoint is the quantized model, not the latent weights."""
from __future__ import annotations

import pytest
import torch

from model.quant import quantize
from storage.weights import consolidated_state_dict, load_weights

from launching import launch, losses

QAT = ["train.steps=4", "checkpoint.every=4", "eval.every=0", "monitors.jump.every=0", "train.quantization.bits=2"]


pytestmark = pytest.mark.slow  # two launches (ZeRO 1 and 3); the quantized model itself: tests/model/test_quant.py


@pytest.fixture(scope="module")
def qat_runs(runs_root):
    runs = {stage: runs_root / f"qat_zero{stage}" for stage in (1, 3)}
    for stage, run in runs.items():
        launch(run, [*QAT, f"deepspeed.zero_stage={stage}"])
    return runs


@pytest.mark.distributed
def test_zero3_trains_the_quantized_model_as_zero1_does(qat_runs):
    one, three = losses(qat_runs[1]), losses(qat_runs[3])
    assert one.keys() == three.keys() == {1, 2, 3, 4}
    for step in one:
        assert three[step] == pytest.approx(one[step], rel=1e-4)


@pytest.mark.numerics
@pytest.mark.distributed
@pytest.mark.parametrize("stage", [1, 3])
def test_readers_get_the_quantized_weights_and_the_checkpoint_keeps_the_latent_ones(qat_runs, stage):
    ckpt = qat_runs[stage] / "checkpoints" / "step_4"
    _, read = load_weights(ckpt)
    latent = consolidated_state_dict(ckpt)
    block = [k for k in latent if k.startswith("layers.") and k.endswith((".wq.weight", ".w2.weight"))]
    assert block
    for name in block:
        assert max(len(torch.unique(row)) for row in read[name]) <= 3  # 2 bits, symmetric: -s, 0, s
        assert torch.equal(read[name], quantize(latent[name], 2))
        assert min(len(torch.unique(row)) for row in latent[name]) > 3
    assert torch.equal(read["output.weight"], latent["output.weight"])  # the head stays full precision
