"""µP in a real run: 2 gloo ranks under ZeRO-3 (the flat-shard case) train with the per-group learning rates,
checkpoint them, and resume exactly."""
from __future__ import annotations

import shutil

import pytest
import torch

from launching import launch, losses, metrics

MUP = ["model.mup.base_width=16", "deepspeed.zero_stage=3", "train.steps=4", "checkpoint.every=2", "eval.every=0",
       "monitors.jump.every=0", "train.grad_clip=0", "train.schedule=constant"]


@pytest.mark.numerics
@pytest.mark.distributed
@pytest.mark.slow  # two launches; the groups themselves are checked in-process (tests/pretrain/test_mup_groups.py)
def test_mup_groups_train_checkpoint_and_resume_exactly_under_zero3(runs_root):
    """dim 64 from base 16: the hidden group's lr is 1/4 of the others' in the saved optimizer state of every
    rank; `lr` in the metrics is the schedule's (warmup 2: 1/2 then all of train.lr); a run resumed from the
    step-2 checkpoint takes steps 3-4 bitwise as the uninterrupted one."""
    full = runs_root / "mup-z3"
    launch(full, MUP)
    assert [r["lr"] for r in metrics(full) if "lr" in r] == pytest.approx([1.5e-3, 3e-3, 3e-3, 3e-3])
    for rank in (0, 1):
        saved = torch.load(full / "checkpoints" / "step_4" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
                           map_location="cpu", weights_only=False)["optimizer_state_dict"]["optimizer_state_dict"]
        assert [(g["lr"], g["lr_scale"]) for g in saved["param_groups"]] == [(3e-3, 1.0), (7.5e-4, 0.25), (3e-3, 1.0)]
    resumed = runs_root / "mup-z3-resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_2", resumed / "checkpoints" / "step_2")
    (resumed / "checkpoints" / "latest").write_text("step_2\n")
    launch(resumed, MUP)
    ours, theirs = losses(resumed), losses(full)
    assert sorted(ours) == [3, 4] and all(ours[s] == theirs[s] for s in ours), (ours, theirs)
