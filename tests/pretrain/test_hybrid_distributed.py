"""Norm-only hybrid mode on 2 CPU ranks: after t0 only the RMSNorm gains move, under ZeRO 1 and 3, across resume."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pretrain.config import TrainConfig
from pretrain.hybrid import NORM
from pretrain.optim import lr_factor
from storage import weights

from launching import UNCLIPPED_RUN, UNCLIPPED_STEPS, launch, losses, metrics

pytestmark = pytest.mark.distributed

T0, STEPS = 3, 6
# A checkpoint every step: the trajectory report spans t0 with two updates before the switch and three after.
HYBRID = [f"train.steps={STEPS}", "train.trainable.mode=norms_only", f"train.trainable.after_step={T0}",
          "checkpoint.every=1", f"checkpoint.keep={STEPS}", "eval.every=0", "monitors.jump.every=0"]


RUNS = ("zero1-bf16", "zero1-fp32", "zero3-fp32")


@pytest.fixture(scope="session")
def hybrid_runs(runs_root):
    """ZeRO-1 in bf16 (DeepSpeed's BF16_Optimizer checkpoints), ZeRO-1 in fp32 (zero_to_fp32 checkpoints, whose
    optimizer state lacks the frozen parameters) and ZeRO-3 in fp32."""
    runs = {}
    for key in RUNS:
        stage, precision = key.split("-")
        run = runs_root / f"hybrid_{key}"
        launch(run, [*HYBRID, f"deepspeed.zero_stage={stage[-1]}", f"train.precision={precision}"])
        runs[key] = run
    return runs


@pytest.mark.numerics
@pytest.mark.parametrize("key", RUNS)
def test_only_norms_change_after_t0(hybrid_runs, key):
    ckpts = hybrid_runs[key] / "checkpoints"
    _, at_t0 = weights.load_weights(ckpts / f"step_{T0}")
    _, at_end = weights.load_weights(ckpts / f"step_{STEPS}")
    norms = [n for n in at_t0 if NORM.search(n)]
    assert len(norms) == 2 * 2 + 1  # two per block (tiny test model: 2 layers) + the final norm
    for name, before in at_t0.items():
        if name in norms:
            assert not before.equal(at_end[name]), f"{name} did not train"
        else:
            assert before.equal(at_end[name]), f"{name} changed after t0"
    switch = [r for r in metrics(hybrid_runs[key]) if "hybrid/trainable_params" in r]
    assert [r["step"] for r in switch] == [T0]
    assert switch[0]["hybrid/trainable_params"] == sum(at_t0[n].numel() for n in norms)


def test_schedule_continues_across_the_switch(hybrid_runs):
    cfg = TrainConfig(steps=STEPS, warmup_steps=2, lr=3e-3)  # as in tests/launching.py TINY_RUN
    logged = {r["step"]: r["lr"] for r in metrics(hybrid_runs["zero1-bf16"]) if "lr" in r}
    for step, lr in logged.items():
        assert lr == pytest.approx(cfg.lr * lr_factor(step - 1, cfg))


@pytest.mark.numerics
def test_bf16_zero1_checkpoint_consolidates_to_the_masters(hybrid_runs):
    """The fp32 masters read back from BF16_Optimizer files round to exactly the bf16 module weights."""
    ckpt = hybrid_runs["zero1-bf16"] / "checkpoints" / f"step_{STEPS}"
    _, masters = weights.load_weights(ckpt)
    module = torch.load(ckpt / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert set(masters) == set(module)
    for name, weight in module.items():
        assert weight.dtype == torch.bfloat16 and masters[name].dtype == torch.float32
        assert masters[name].bfloat16().equal(weight), name


@pytest.mark.numerics
def test_resume_across_t0_is_exact(hybrid_runs, runs_root):
    full = losses(hybrid_runs["zero3-fp32"])
    run = runs_root / "hybrid_zero3_resumed"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(hybrid_runs["zero3-fp32"] / "checkpoints" / f"step_{T0}", run / "checkpoints" / f"step_{T0}")
    (run / "checkpoints" / "latest").write_text(f"step_{T0}\n")
    launch(run, [*HYBRID, "deepspeed.zero_stage=3"])
    resumed = losses(run)
    assert [resumed[s] for s in range(T0 + 1, STEPS + 1)] == [full[s] for s in range(T0 + 1, STEPS + 1)]


def trajectory_report(run: Path, out: Path, *args: str) -> None:
    from pretrain.probes.trajectory.report import main

    main([str(run), "--out", str(out), *args])


@pytest.mark.numerics
@pytest.mark.parametrize("key", RUNS)
def test_trajectory_report_spans_the_norm_only_switch(hybrid_runs, key, tmp_path):
    """The report maps the run across t0: frozen groups' updates after t0 are reported as zero and left out of
    their maps (no NaN anywhere), while the norm groups' update maps span every checkpoint."""
    trajectory_report(hybrid_runs[key], tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())  # strict JSON: a NaN would not parse back
    assert summary["steps"] == list(range(1, STEPS + 1))
    groups = summary["groups"]
    norm_groups = {g for g in groups if g.endswith(".norms") or g == "final_norm"}
    assert len(norm_groups) == 3
    for g, v in groups.items():
        if g in norm_groups:
            assert v["zero_updates"] == [] and v["mds_updates"] is not None
        else:  # the update that starts at step t0 is the first one taken by the norm-only engine
            assert v["zero_updates"] == list(range(T0, STEPS)), g
            assert v["mds_updates"] is not None  # two moving updates before t0: one pair to compare
        assert v["mds_params"] is not None
    table = (tmp_path / "summary.md").read_text()
    assert "| L0.q |" in table and f"from step {T0} |" in table and "nan" not in table.lower()
    assert (tmp_path / "params.png").is_file() and (tmp_path / "updates.png").is_file()


def test_trajectory_report_of_two_checkpoints_draws_the_parameter_map(hybrid_runs, tmp_path, capsys):
    trajectory_report(hybrid_runs["zero3-fp32"], tmp_path, "--start", str(STEPS - 1))
    assert (tmp_path / "params.png").is_file() and not (tmp_path / "updates.png").exists()
    assert "an update map needs at least 3" in capsys.readouterr().out
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == [STEPS - 1, STEPS]


def test_random_control_moves_as_many_weights_as_the_norms_and_no_norm(runs_root):
    """mode=random after t0 (ZeRO-2: gradients reduced in hooks): exactly the drawn elements move, as many as the
    norm gains, while the norms and every other element stay as they were at t0."""
    run = runs_root / "hybrid_random"
    launch(run, [*HYBRID, "train.trainable.mode=random", "deepspeed.zero_stage=2", "train.precision=fp32"])
    _, at_t0 = weights.load_weights(run / "checkpoints" / f"step_{T0}")
    _, at_end = weights.load_weights(run / "checkpoints" / f"step_{STEPS}")
    n_norms = sum(w.numel() for n, w in at_t0.items() if NORM.search(n))
    assert at_t0["output.weight"].equal(at_t0["tok_embeddings.weight"])  # tied: count that tensor once
    moved = {n: int((at_t0[n] != at_end[n]).sum()) for n in at_t0 if n != "output.weight"}
    assert all(moved[n] == 0 for n in moved if NORM.search(n))
    assert sum(moved.values()) == n_norms
    assert sum(1 for n in moved if moved[n]) > 3
    switch = [r for r in metrics(run) if "hybrid/trainable_params" in r]
    assert [(r["step"], r["hybrid/trainable_params"]) for r in switch] == [(T0, n_norms)]


@pytest.mark.numerics
def test_adam_moments_carry_across_t0(unclipped_run, runs_root):
    """Without clipping (whose norm is the subset's after t0) a norm gain's first update after t0 depends only on
    its gradient, its Adam moments and step count, and the lr: all equal in a run that never switches, so the
    gains must come out equal there (with the moments restarted instead, this test fails). ZeRO-1; ZeRO-2 goes
    through the same optimizer class (it passed too when this test ran both, 2 min)."""
    t0 = UNCLIPPED_STEPS - 1
    hybrid = runs_root / "carry_hybrid_zero1"
    launch(hybrid, [*UNCLIPPED_RUN, "train.trainable.mode=norms_only", f"train.trainable.after_step={t0}"])
    _, ref = weights.load_weights(unclipped_run / "checkpoints" / f"step_{t0 + 1}")
    _, got = weights.load_weights(hybrid / "checkpoints" / f"step_{t0 + 1}")
    _, at_t0 = weights.load_weights(hybrid / "checkpoints" / f"step_{t0}")
    norms = [n for n in ref if NORM.search(n)]
    for name in norms:
        assert not got[name].equal(at_t0[name])
        # atol 1e-6 (~8 fp32 ulps at a gain of 1): after t0 the norms' gradients are reduced in a buffer of their
        # own (another summation order); restarted moments would move a gain by ~lr (3e-3).
        assert torch.allclose(got[name], ref[name], rtol=0, atol=1e-6), name
    assert all(got[n].equal(at_t0[n]) for n in ref if n not in norms)
