"""Checkpoints that are wrong in ways sizes cannot see: same-size corruption, a garbled manifest, a stale
universal conversion, a torn metrics line. Each is named, and `checkpoint.fallback` finds the way out."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from pretrain.metrics import MetricsLogger
from storage import folders, pickles, retention, universal, weights


@pytest.fixture
def ckpts(zero_runs, tmp_path) -> Path:
    """A private copy of the ZeRO-1 run's checkpoints (steps 3 and 6, latest = 6)."""
    root = tmp_path / "checkpoints"
    shutil.copytree(zero_runs[1] / "checkpoints", root)
    return root


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))  # same size: only the content hash can tell


@pytest.mark.distributed
def test_same_size_corruption_is_named_and_fallback_resumes_the_previous(ckpts):
    manifest = json.loads((ckpts / "step_6" / "manifest.json").read_text())
    assert set(manifest[folders.HASHES]) == set(manifest["files"])  # every file is hashed at save
    victim = ckpts / "step_6" / "mp_rank_00_model_states.pt"
    flip_a_byte(victim)
    with pytest.raises(folders.CheckpointError, match=f"{victim} is corrupted"):
        folders.verify(ckpts / "step_6")
    with pytest.raises(folders.CheckpointError, match="corrupted"):  # nor exported or grown from
        weights.load_weights(ckpts)
    with pytest.raises(folders.CheckpointError, match="checkpoint.fallback=true"):
        retention.resumable(ckpts, fallback=False)
    assert retention.resumable(ckpts, fallback=True) == ckpts / "step_3"


@pytest.mark.distributed
def test_garbled_manifest_is_a_named_error_and_fallback_resumes_the_previous(ckpts):
    (ckpts / "step_6" / "manifest.json").write_text('{"step": 6, "files": {"mp_rank')
    with pytest.raises(folders.CheckpointError, match="manifest.json is damaged"):
        folders.verify(ckpts / "step_6")
    assert retention.resumable(ckpts, fallback=True) == ckpts / "step_3"


class RunsCode:
    """What a forged checkpoint file would hold: unpickling it calls os.system."""

    def __reduce__(self):
        return os.system, ("echo pwned",)


@pytest.mark.distributed
def test_a_pickle_that_would_run_code_is_refused_before_deepspeed_loads_it(ckpts, monkeypatch):
    """The forger rewrote the manifest too, so sizes and hashes agree: only the pickle scan can tell."""
    optim = sorted((ckpts / "step_6").glob("*optim_states.pt"))[0]
    state = torch.load(optim, weights_only=False)
    state["payload"] = RunsCode()
    torch.save(state, optim)
    manifest = json.loads((ckpts / "step_6" / "manifest.json").read_text())
    folders.write_manifest(ckpts / "step_6", 6, manifest["meta"])
    with pytest.raises(folders.CheckpointError, match=rf"{optim} would run code .*'posix\.system'.*GROWLM_TRUST"):
        folders.verify(ckpts / "step_6")
    with pytest.raises(folders.CheckpointError, match="would run code"):  # nor exported or grown from
        weights.load_weights(ckpts)
    assert retention.resumable(ckpts, fallback=True) == ckpts / "step_3"
    monkeypatch.setenv(pickles.TRUST_ENV, "1")  # the user's own checkpoint, their call
    folders._VERIFIED.clear()
    assert folders.verify(ckpts / "step_6")["step"] == 6


@pytest.mark.distributed
def test_every_zero_stage_checkpoint_passes_the_pickle_scan(zero_runs):
    """DeepSpeed's own files (optimizer states of ZeRO 1-3, fp32 and bf16) hold nothing beyond the allowlist."""
    for run in zero_runs.values():
        for step_dir in (run / "checkpoints").glob("step_*"):
            pickles.check_folder(step_dir)


def test_prune_takes_the_universal_conversion_with_its_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        (root / f"step_{step}").mkdir(parents=True)
        (root / f"step_{step}" / "manifest.json").write_text(json.dumps({"step": step, "files": {}}))
        (root / f"step_{step}.universal" / "zero").mkdir(parents=True)
    (root / "latest").write_text("step_3\n")
    retention.prune(root, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_2", "step_2.universal", "step_3",
                                                       "step_3.universal"]


def test_prune_keeps_a_checkpoint_a_job_is_reading_until_it_is_done(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        (root / f"step_{step}").mkdir(parents=True)
        (root / f"step_{step}" / "manifest.json").write_text(json.dumps({"step": step, "files": {}}))
    (root / "latest").write_text("step_3\n")
    reading = retention.hold_for_reading(root / "step_1")  # as a detached job holds it
    assert retention.being_read(root / "step_1") and not retention.being_read(root / "step_2")
    retention.prune(root, keep=1)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_1", "step_3"]
    os.close(reading)  # the job ended
    retention.prune(root, keep=1)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_3"]


@pytest.mark.distributed
def test_a_universal_conversion_of_an_earlier_save_is_not_reused(ckpts):
    """A step saved again (e.g. after a rollback) gets a new manifest: its old conversion is stale."""
    ckpt = ckpts / "step_3"
    first = universal.to_universal(ckpt)
    assert (first / universal.UNIVERSAL_SOURCE).read_text() == folders.file_hash(ckpt / "manifest.json")
    stamp = (first / universal.UNIVERSAL_SOURCE).stat().st_mtime_ns
    assert universal.to_universal(ckpt) == first and (first / universal.UNIVERSAL_SOURCE).stat().st_mtime_ns == stamp
    manifest = json.loads((ckpt / "manifest.json").read_text())
    (ckpt / "manifest.json").write_text(json.dumps({**manifest, "time": time.time() + 1}))  # saved again
    again = universal.to_universal(ckpt)
    assert (again / universal.UNIVERSAL_SOURCE).read_text() == folders.file_hash(ckpt / "manifest.json")


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    logger = MetricsLogger(run, total_steps=10, start_step=2, enabled=True, tensorboard=False, progress="none")
    logger.log({"step": 3, "loss": 1.25})
    logger.close()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert "dropped line(s) [3]" in caplog.text
