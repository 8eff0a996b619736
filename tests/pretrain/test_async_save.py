"""Asynchronous checkpoints (pretrain/async_save.py): the pieces alone, then real 2-rank runs whose saves are
asynchronous compared with the synchronous `zero_runs`."""
from __future__ import annotations

import errno
import io
import json
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

from pretrain import async_save
from pretrain.async_save import (WRITTEN, AsyncSaves, Staging, fill, finish_rank, mark_written, snapshot,
                                 wait_for_ranks)
from pretrain.checkpoint import OutOfSpace
from storage import folders

from launching import ZERO_RUN, launch, losses

ASYNC = "checkpoint.async_save=true"


def saved_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_a_snapshot_keeps_the_state_of_its_time_and_saves_the_same_bytes():
    flat = torch.arange(10.0)  # ZeRO's parameters are views into one flat buffer
    module = OrderedDict(a=flat[:4].view(2, 2), b=flat[4:])
    module._metadata = {"": {"version": 1}}  # what nn.Module.state_dict attaches
    param = torch.nn.Parameter(torch.ones(3))
    fp32 = torch.ones(2, requires_grad=True)
    fp32.ds_id = 5  # ZeRO-3 tags its flat groups; torch.save writes the tag
    placeholders = [torch.empty(0), torch.empty(0)]  # ZeRO-3's partitioned parameters: one empty storage each
    state = {"module": module, "params": [param, param * 2, fp32, *placeholders], "scaler": {"scale": 1.0},
             "step": 7}
    state["again"] = state["scaler"]
    copies = []
    copy = snapshot(state, Staging(), copies)
    assert len(copies) == 6  # one per storage: the flat buffer, param, param * 2, fp32 and each placeholder
    assert saved_bytes(copy) != saved_bytes(state)  # laid out, not yet filled: the saving thread fills it
    fill(copies)
    assert saved_bytes(copy) == saved_bytes(state)
    flat += 100  # training goes on in place
    param.data += 1
    state["scaler"]["scale"] = 0.5
    assert copy["module"]["a"].tolist() == [[0, 1], [2, 3]] and copy["module"]["b"].tolist() == [4, 5, 6, 7, 8, 9]
    assert copy["params"][0].tolist() == [1, 1, 1] and copy["scaler"]["scale"] == 1.0
    assert copy["module"]["a"].untyped_storage().data_ptr() == copy["module"]["b"].untyped_storage().data_ptr()
    assert copy["again"] is copy["scaler"] and copy["module"]._metadata == {"": {"version": 1}}


def test_rank_zero_publishes_only_once_every_rank_marked_its_files_written(tmp_path):
    ckpt = tmp_path / "step_4"
    ckpt.mkdir()
    published = threading.Event()

    def publish():
        assert not (ckpt / WRITTEN).exists()  # markers never reach the manifest
        published.set()

    mark_written(ckpt, 2, None)  # a fast rank
    finisher = threading.Thread(target=finish_rank, args=(ckpt, 0, 3, 30.0, publish, None))
    finisher.start()
    assert not published.wait(0.5)  # rank 1 is still writing
    mark_written(ckpt, 1, None)
    finisher.join(30)
    assert published.is_set()


def test_a_rank_that_failed_or_never_finished_is_named(tmp_path):
    ckpt = tmp_path / "step_4"
    mark_written(ckpt, 0, None)
    with pytest.raises(folders.CheckpointError, match=r"rank\(s\) \[1\] did not finish writing .* within 0.2 s"):
        wait_for_ranks(ckpt, 2, timeout_s=0.2)
    mark_written(ckpt, 1, OSError(errno.EIO, "I/O error"))
    with pytest.raises(folders.CheckpointError, match=r"step_4 is left partial: rank 1 .*OSError.*I/O error"):
        wait_for_ranks(ckpt, 2, timeout_s=30)


class Disk:
    """The background writes, held at `gate` (a slow disk) and failing with `error` once let through."""

    def __init__(self):
        self.gate, self.error = threading.Event(), None

    def write(self, state, path, zipfile, _write=async_save.write_file):
        assert self.gate.wait(30)
        if self.error:
            raise self.error
        _write(state, path, zipfile)


class FakeEngine:
    """What a save uses of a DeepSpeed engine: save_checkpoint writing one file through its checkpoint engine
    (DeepSpeed's own, which the save replaces with a SnapshotEngine meanwhile)."""

    def __init__(self):
        self.weights = torch.zeros(4)
        self.checkpoint_engine = TorchCheckpointEngine()
        self.checkpoint_engine.zipfile_serialization = True  # DeepSpeed's config default

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        self.checkpoint_engine.makedirs(f"{save_dir}/{tag}", exist_ok=True)
        self.checkpoint_engine.save({"weights": self.weights, **client_state}, f"{save_dir}/{tag}/model.pt")


@pytest.fixture()
def saving(tmp_path, monkeypatch):
    """An AsyncSaves of one process, a FakeEngine, what a save needs beside them, and the Disk it writes to."""
    (tmp_path / "config.yaml").write_text("run: {}\n")
    disk = Disk()
    monkeypatch.setattr(async_save, "write_file", disk.write)
    root = tmp_path / "checkpoints"
    return AsyncSaves(root, keep=3, timeout_s=30), FakeEngine(), {"config.yaml": tmp_path / "config.yaml"}, root, disk


def test_one_save_in_flight_published_when_written_with_the_state_of_its_step(saving):
    saves, engine, extra, root, disk = saving
    saves.save(engine, 2, {"step": 2}, extra, {})  # returns while the write waits at the gate
    saves.before_update()  # what the trainer calls before every optimizer step
    engine.weights += 1  # training goes on
    assert saves.completed() == [] and not (root / "step_2" / folders.MANIFEST).exists()
    assert not (root / folders.LATEST).exists()
    second = threading.Thread(target=saves.save, args=(engine, 4, {"step": 4}, extra, {}))
    second.start()
    second.join(0.5)
    assert second.is_alive()  # the next save waits for the one in flight
    disk.gate.set()
    second.join(30)
    assert saves.completed(wait=True) == [root / "step_2", root / "step_4"]
    assert folders.latest(root) == root / "step_4" and folders.verify(root / "step_2")["step"] == 2
    for step, weights in ((2, 0.0), (4, 1.0)):
        saved = torch.load(root / f"step_{step}" / "model.pt", weights_only=True)
        assert saved["step"] == step and saved["weights"].tolist() == [weights] * 4
        assert not (root / f"step_{step}" / WRITTEN).exists()


def test_training_changes_the_state_only_once_the_save_has_copied_it(saving, monkeypatch):
    """The copy runs in the saving thread, beside the next step's forward and backward; `before_update` (before
    each optimizer step) waits for it, so an update never reaches the checkpoint of an earlier step."""
    saves, engine, extra, root, disk = saving
    copying, filled = threading.Event(), []

    def slow_fill(copies, _fill=async_save.fill):
        assert copying.wait(30)
        _fill(copies)
        filled.append(True)

    monkeypatch.setattr(async_save, "fill", slow_fill)
    saves.save(engine, 2, {"step": 2}, extra, {})
    update = threading.Thread(target=lambda: (saves.before_update(), engine.weights.add_(1)))
    update.start()
    update.join(0.5)
    assert update.is_alive() and engine.weights.tolist() == [0.0] * 4  # the update waits for the copy
    copying.set()
    update.join(30)
    assert filled and engine.weights.tolist() == [1.0] * 4
    disk.gate.set()
    assert saves.completed(wait=True) == [root / "step_2"]
    assert torch.load(root / "step_2" / "model.pt", weights_only=True)["weights"].tolist() == [0.0] * 4


def test_training_that_dies_still_publishes_the_checkpoint_in_flight(saving):
    saves, engine, extra, root, disk = saving
    saves.save(engine, 2, {"step": 2}, extra, {})
    threading.Timer(0.3, disk.gate.set).start()  # the write takes a while
    saves.settle()  # what Trainer.fit does on an exception: no collectives
    assert folders.latest(root) == root / "step_2"


def test_a_failed_background_write_raises_in_training_and_publishes_nothing(saving):
    saves, engine, extra, root, disk = saving
    disk.error = OSError(errno.ENOSPC, "No space left on device")
    disk.gate.set()
    saves.save(engine, 2, {"step": 2}, extra, {})
    with pytest.raises(OutOfSpace, match="no space left on the device of .* while saving step_2"):
        saves.completed(wait=True)
    assert (root / "step_2" / WRITTEN / "rank_0").read_text().startswith("failed: OutOfSpace: no space left")
    assert not (root / "step_2" / folders.MANIFEST).exists() and not (root / folders.LATEST).exists()
    saves.settle()  # nothing left in flight: returns at once


def deepspeed_records(ckpt: Path) -> dict[str, bytes]:
    """Every record of every file DeepSpeed wrote in `ckpt`, by file and name inside its archive (whose folder
    is the file's name or, written through a Python file, `archive`)."""
    folders.verify(ckpt)
    records = {}
    for path in sorted(ckpt.glob("*.pt")):
        with zipfile.ZipFile(path) as z:
            records |= {f"{path.name}:{name.split('/', 1)[1]}": z.read(name) for name in z.namelist()}
    return records


@pytest.mark.numerics
@pytest.mark.distributed
@pytest.mark.parametrize("stage", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_async_saves_train_and_write_exactly_what_synchronous_saves_do(zero_runs, runs_root, stage):
    """Same losses bitwise, and the same bytes in every record of every DeepSpeed file of every checkpoint:
    the snapshot is the state of its step though training went on. An inline job sees each checkpoint only
    once complete."""
    run = runs_root / f"async_zero{stage}"
    launch(run, [f"deepspeed.zero_stage={stage}", *ZERO_RUN, ASYNC, "imports=[toy_plugins]", "jobs.toy.every=1",
                 "jobs.toy.mode=inline"])
    assert losses(run) == losses(zero_runs[stage])
    assert [s for s, _ in folders.complete_checkpoints(run / "checkpoints")] == [3, 6]
    for step in (3, 6):
        ours, theirs = (deepspeed_records(r / "checkpoints" / f"step_{step}") for r in (run, zero_runs[stage]))
        assert ours == theirs and any(name.startswith("zero_pp_rank_1") for name in ours)  # both ranks' files
        seen = json.loads((run / "jobs" / "toy" / f"step_{step}" / "seen.json").read_text())
        assert seen["complete"]


@pytest.mark.numerics
@pytest.mark.distributed
def test_a_kill_during_an_async_save_leaves_latest_and_the_resume_is_exact(zero_runs, runs_root):
    """Every rank SIGKILLed while writing checkpoint 4 in the background, once training reached step 5: step 4
    has files but no manifest, latest names step 2, and the resume ends equal to the synchronous run."""
    run = runs_root / "async_killed"
    every_2 = ["deepspeed.zero_stage=1", *ZERO_RUN, "checkpoint.every=2", ASYNC]
    proc = launch(run, every_2, check=False, fault="kill_in_async_save:4")
    assert proc.returncode != 0
    assert "killed while writing step_4, training at step 5" in proc.stdout + proc.stderr  # it went on meanwhile
    ckpts = run / "checkpoints"
    assert (ckpts / folders.LATEST).read_text().strip() == "step_2"
    assert list((ckpts / "step_4").glob("*.pt")) and not (ckpts / "step_4" / folders.MANIFEST).exists()
    launch(run, every_2)
    assert losses(run) == losses(zero_runs[1])
    assert [s for s, _ in folders.complete_checkpoints(ckpts)] == [2, 4, 6]
    assert all(folders.verify(ckpts / f"step_{s}")["step"] == s for s in (2, 4, 6))
