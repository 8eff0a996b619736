"""Norm-only hybrid mode on 2 CPU ranks: after t0 only the RMSNorm gains move, under ZeRO 1 and 3, across resume."""
from __future__ import annotations

import shutil

import pytest
import torch

from launching import launch, losses, metrics
from pretrain import checkpoint
from pretrain.config import TrainConfig
from pretrain.hybrid import NORM
from pretrain.optim import lr_factor

pytestmark = pytest.mark.distributed

T0, STEPS = 2, 6
HYBRID = [f"train.steps={STEPS}", "train.trainable.mode=norms_only", f"train.trainable.after_step={T0}",
          "checkpoint.every=2", "checkpoint.keep=5", "eval.every=0", "monitors.jump.every=0"]


@pytest.fixture(scope="session")
def hybrid_runs(runs_root):
    """ZeRO-1 in bf16 (DeepSpeed's BF16_Optimizer checkpoints) and ZeRO-3 in fp32."""
    runs = {}
    for stage, precision in ((1, "bf16"), (3, "fp32")):
        run = runs_root / f"hybrid_zero{stage}"
        launch(run, [*HYBRID, f"deepspeed.zero_stage={stage}", f"train.precision={precision}"])
        runs[stage] = run
    return runs


@pytest.mark.parametrize("stage", (1, 3))
def test_only_norms_change_after_t0(hybrid_runs, stage):
    ckpts = hybrid_runs[stage] / "checkpoints"
    _, at_t0 = checkpoint.load_weights(ckpts / f"step_{T0}")
    _, at_end = checkpoint.load_weights(ckpts / f"step_{STEPS}")
    norms = [n for n in at_t0 if NORM.search(n)]
    assert len(norms) == 2 * 2 + 1  # two per block (tiny test model: 2 layers) + the final norm
    for name, before in at_t0.items():
        if name in norms:
            assert not before.equal(at_end[name]), f"{name} did not train"
        else:
            assert before.equal(at_end[name]), f"{name} changed after t0"
    switch = [r for r in metrics(hybrid_runs[stage]) if "hybrid/trainable_params" in r]
    assert [r["step"] for r in switch] == [T0]
    assert switch[0]["hybrid/trainable_params"] == sum(at_t0[n].numel() for n in norms)


def test_schedule_continues_across_the_switch(hybrid_runs):
    cfg = TrainConfig(steps=STEPS, warmup_steps=2, lr=3e-3)  # as in tests/launching.py TINY_RUN
    logged = {r["step"]: r["lr"] for r in metrics(hybrid_runs[1]) if "lr" in r}
    for step, lr in logged.items():
        assert lr == pytest.approx(cfg.lr * lr_factor(step - 1, cfg))


def test_bf16_zero1_checkpoint_consolidates_to_the_masters(hybrid_runs):
    """The fp32 masters read back from BF16_Optimizer files round to exactly the bf16 module weights."""
    ckpt = hybrid_runs[1] / "checkpoints" / f"step_{STEPS}"
    _, masters = checkpoint.load_weights(ckpt)
    module = torch.load(ckpt / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert set(masters) == set(module)
    for name, weight in module.items():
        assert weight.dtype == torch.bfloat16 and masters[name].dtype == torch.float32
        assert masters[name].bfloat16().equal(weight), name


def test_resume_across_t0_is_exact(hybrid_runs, runs_root):
    full = losses(hybrid_runs[3])
    run = runs_root / "hybrid_zero3_resumed"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(hybrid_runs[3] / "checkpoints" / f"step_{T0}", run / "checkpoints" / f"step_{T0}")
    (run / "checkpoints" / "latest").write_text(f"step_{T0}\n")
    launch(run, [*HYBRID, "deepspeed.zero_stage=3"])
    resumed = losses(run)
    assert [resumed[s] for s in range(T0 + 1, STEPS + 1)] == [full[s] for s in range(T0 + 1, STEPS + 1)]
