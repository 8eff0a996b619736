"""Carrying the optimizer into a grown run, on 2 CPU ranks: a model grown by `zero_block` (identity blocks
interleaved) that carries the source's mapped Adam moments, step count, lr schedule position and data position
takes, on its copied layers, exactly the update the source took next. Without clipping (whose global norm would
include the new blocks' gradients) each copied weight's update depends only on its gradient (the new blocks add
exactly zero to the residual stream and its gradient), its moments and step count, the lr and the batch: all
carried (restarting the moments or the schedule moves them by ~2e-3). The source is launching.UNCLIPPED_RUN, whose
constant lr is also what growth's LAG phases use."""
from __future__ import annotations

import json

import pytest
import torch

from experiments.__main__ import main
from growth.folders import grow_folder
from storage.carry import CARRY_FILE, load_carry
from storage.folders import CheckpointError
from storage.weights import load_weights

from launching import UNCLIPPED_RUN, UNCLIPPED_STEPS, launch, metrics

pytestmark = pytest.mark.distributed

S = UNCLIPPED_STEPS - 1
"""The source checkpoint grown; the source's own step S + 1 is the reference."""


@pytest.fixture(scope="module")
def source(unclipped_run):
    return unclipped_run


@pytest.fixture(scope="module")
def grown(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("carry") / "grown"
    result = grow_folder(source / "checkpoints" / f"step_{S}", "zero_block", ["n_layers=4"], out,
                         {"position": "interleave"}, carry=True)
    return out, result.record["layer_map"]


def test_carry_file_holds_the_sources_progress_and_moments(grown):
    folder, layer_map = grown
    carried = load_carry(folder)
    assert carried["step"] == S and carried["optimizer_step"] == S and carried["sampler"]["position"] > 0
    assert layer_map == [0, None, 1, None]
    fresh = carried["moments"]["layers.1.attention.wq.weight"]["exp_avg"]
    copied = carried["moments"]["layers.2.attention.wq.weight"]["exp_avg"]
    assert fresh.abs().sum() == 0 and copied.abs().sum() > 0


@pytest.fixture(scope="module")
def lag_carry(source, runs_root):
    """`growth lag --carry` over the same zero_block growth (ZeRO-1, the source's config): its one candidate run
    is the ZeRO-1 case of the exact-update test below."""
    out = runs_root / "lag_carry"
    assert main(["lag", "--from", str(source / "checkpoints" / f"step_{S}"), "--to", "n_layers=4", "--pool",
                 "zero_block:position=interleave", "--lag-steps", "1", "--validate-steps", "2", "--carry",
                 "--out", str(out), "log.progress=none", "train.schedule=constant", "eval.every=1"]) == 0
    return out


def test_lag_with_carry_counts_from_growth_and_continues_at_the_peak_lr(lag_carry, source):
    """The candidate starts at the source's step with no new warmup, its curve counted from growth; at a constant
    lr the lag and the validation are one launch."""
    report = json.loads((lag_carry / "lag.json").read_text())
    assert sorted(int(s) for s in report["candidates"][0]["curve"]) == [0, 1, 2]
    run = lag_carry / "runs" / "zero_block-positioninterleave"
    assert sum(line.startswith("$ ") for line in run.with_name(run.name + ".log").read_text().splitlines()) == 1
    trained = [r for r in metrics(run) if "lr" in r]
    assert [r["step"] for r in trained] == [S + 1, S + 2]
    assert trained[0]["lr"] == pytest.approx(3e-3)  # the peak: a fresh run's step 1 has lr / warmup_steps


@pytest.mark.numerics
@pytest.mark.parametrize("stage", [1, 3])
def test_grown_run_takes_the_sources_next_update_on_the_copied_layers(source, grown, lag_carry, runs_root, stage):
    folder, layer_map = grown
    if stage == 1:  # the LAG candidate: the same growth of the same checkpoint, the same carry
        run = lag_carry / "runs" / "zero_block-positioninterleave"
        _, lag_grown = load_weights(lag_carry / "grown" / "zero_block-positioninterleave")
        _, direct = load_weights(folder)
        assert all(lag_grown[n].equal(direct[n]) for n in direct)
    else:
        run = runs_root / f"carry_grown_zero{stage}"
        launch(run, [*UNCLIPPED_RUN, "model.n_layers=4", f"train.init_from={folder}", "train.carry.optimizer=true",
                     "train.carry.schedule=continue", f"deepspeed.zero_stage={stage}"])
        assert [r["step"] for r in metrics(run) if "loss" in r] == [S + 1]  # it went on from the source's step
    _, start = load_weights(folder)
    _, ref = load_weights(source / "checkpoints" / f"step_{S + 1}")
    _, got = load_weights(run / "checkpoints" / f"step_{S + 1}")
    pairs = {n: n for n in ref if not n.startswith("layers.")}
    for new, src in enumerate(layer_map):
        if src is not None:
            pairs |= {n.replace(f"layers.{src}.", f"layers.{new}.", 1): n for n in ref if n.startswith(f"layers.{src}.")}
    for new_name, src_name in pairs.items():
        assert not got[new_name].equal(start[new_name]), f"{new_name} did not train"
        # atol 1e-6: the copied layers' gradients are reduced in a longer flat buffer than the source's (another
        # summation order); weights of magnitude < 1 round at < 6e-8, so this allows ~16 roundings of drift, while a
        # restarted Adam state or a lost step moves a weight by ~lr (3e-3).
        assert torch.allclose(got[new_name], ref[src_name], rtol=0, atol=1e-6), (new_name, src_name)


def test_carry_needs_a_folder_grown_with_carry(source, tmp_path):
    out = tmp_path / "plain"
    grow_folder(source / "checkpoints" / f"step_{S}", "stack", ["n_layers=4"], out)
    assert not (out / CARRY_FILE).exists()
    with pytest.raises(CheckpointError, match="grow it with --carry"):
        load_carry(out)
