"""Training recipes in real runs (issue 33), fp32: a WSD run and a branch annealed from a stable-phase
checkpoint of a longer run end bitwise alike; SGD with momentum and Muon resume exactly under ZeRO 1 and 2, and
Muon's ZeRO groups hold exactly the block matrices."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from storage import folders

from launching import launch, losses

WSD = ["train.schedule=wsd", "train.decay_steps=3", "train.warmup_steps=2", "train.grad_clip=0", "eval.every=0",
       "monitors.jump.every=0", "checkpoint.every=2", "checkpoint.keep=5"]


@pytest.mark.numerics
@pytest.mark.process
def test_a_branch_annealed_from_a_stable_phase_checkpoint_matches_the_wsd_run(runs_root):
    """An 8-step WSD run decays over steps 6-8. A 100-step WSD run (stable through step 97) stopped after step 5
    leaves its step-4 checkpoint; a branch resumed from it with train.steps=8, in a run directory of its own,
    decays from there: its losses over steps 5-8 equal the 8-step run's, and the source is untouched."""
    whole = runs_root / "wsd-8"
    launch(whole, [*WSD, "train.steps=8"], ranks=None)
    long = runs_root / "wsd-100"
    assert launch(long, [*WSD, "train.steps=100"], ranks=None, check=False, fault="kill_rank:0:5").returncode != 0
    source = long / "checkpoints" / "step_4"
    before = sorted((p.name, p.stat().st_size) for p in source.rglob("*"))
    branch = runs_root / "wsd-100-annealed-to-8"
    launch(branch, [*WSD, "train.steps=8", f"train.resume={source}"], ranks=None)
    ours, theirs = losses(branch), losses(whole)
    assert sorted(ours) == [5, 6, 7, 8]
    assert [ours[s] for s in ours] == [theirs[s] for s in ours]  # bitwise: the decay starts from the same state
    assert sorted((p.name, p.stat().st_size) for p in source.rglob("*")) == before
    assert folders.latest(long / "checkpoints").name == "step_4"


@pytest.mark.numerics
@pytest.mark.distributed
@pytest.mark.parametrize("stage", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_sgd_with_momentum_resumes_exactly(runs_root, stage):
    """A 6-step SGD run (heavy-ball momentum, weight decay) on 2 ranks, and a run resumed from its step-3
    checkpoint, copied into a fresh run directory: steps 4-6 bitwise equal (the momentum buffers resumed)."""
    sgd = ["train.optimizer=sgd", "train.momentum=0.9", "train.weight_decay=5e-4", "train.lr=0.05",
           f"deepspeed.zero_stage={stage}", "train.steps=6", "checkpoint.every=3", "eval.every=0",
           "monitors.jump.every=0", "train.grad_clip=0"]
    full = runs_root / f"sgd-z{stage}"
    launch(full, sgd)
    assert_resumes_exactly(full, sgd)


def resume_from(full: Path, resumed: Path, step: int) -> None:
    """A fresh run directory holding only `full`'s step-`step` checkpoint, marked latest."""
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / f"step_{step}", resumed / "checkpoints" / f"step_{step}")
    (resumed / "checkpoints" / "latest").write_text(f"step_{step}\n")


def assert_resumes_exactly(full: Path, overrides: list[str]) -> None:
    """Launched from `full`'s step-3 checkpoint in a fresh run directory, the 6-step run takes steps 4-6 bitwise as
    `full` did (the optimizer state resumed), and `full` trained."""
    resumed = full.with_name(full.name + "-resumed")
    resume_from(full, resumed, 3)
    launch(resumed, overrides)
    ours, theirs = losses(resumed), losses(full)
    assert sorted(ours) == [4, 5, 6] and all(ours[s] == theirs[s] for s in ours), (ours, theirs)
    assert theirs[6] < theirs[1]


@pytest.mark.numerics
@pytest.mark.distributed
@pytest.mark.slow  # DeepSpeed torch.compiles Muon's Newton-Schulz kernels: ~50 s more on a fresh machine
@pytest.mark.parametrize("stage", [1, 2])
def test_muon_orthogonalizes_exactly_the_block_matrices_and_resumes_exactly(runs_root, stage):
    """A 6-step Muon run on 2 ranks (untied head): every rank's ZeRO optimizer has the AdamW group of the embedding
    and head, the Muon group of the 2 blocks' 14 matrices (whose state is Muon's momentum), the AdamW group of the 5
    norms, at their own lrs as our LambdaLR scales them; a run resumed from its step-3 checkpoint then takes steps
    4-6 bitwise alike."""
    muon = ["train.optimizer=muon", "train.muon_lr=0.01", "train.lr=0.002", "train.grad_clip=0",
            "model.tie_embeddings=false", f"deepspeed.zero_stage={stage}", "train.steps=6", "train.warmup_steps=4",
            "checkpoint.every=3", "eval.every=0", "monitors.jump.every=0"]
    full, groups = runs_root / f"muon-z{stage}", runs_root / f"muon-z{stage}-groups"
    launch(full, muon, fault=f"optimizer_groups:{groups}")
    blocks = sorted(f"layers.{i}.{m}.weight" for i in range(2) for m in (
        "attention.wq", "attention.wk", "attention.wv", "attention.wo", "feed_forward.w1", "feed_forward.w2",
        "feed_forward.w3"))
    norms = sorted(["norm.weight", *(f"layers.{i}.{n}.weight" for i in range(2) for n in ("attention_norm",
                                                                                              "ffn_norm"))])
    adam = ["exp_avg", "exp_avg_sq", "step"]
    expected = [(["output.weight", "tok_embeddings.weight"], False, 0.002 * 2 / 4, adam),
                (blocks, True, 0.01 * 2 / 4, ["momentum_buffer"]),
                (norms, False, 0.002 * 2 / 4, adam)]  # after step 1 our schedule set warmup step 2 of 4 on each
    for rank in (0, 1):
        built = json.loads((groups / f"rank_{rank}.json").read_text())
        assert [(sorted(g["names"]), g["use_muon"], g["lr"], g["state"]) for g in built] == expected
    assert_resumes_exactly(full, muon)
