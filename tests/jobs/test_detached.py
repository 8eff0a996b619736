"""A detached job that outlives a training run which dies of an error is reported by pid and log."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from pretrain.callbacks import Callback
from pretrain.probes.detached import CheckpointJob
from pretrain.trainer import Trainer


class SleepingJob(CheckpointJob):
    """A stand-in for peeling or lm-eval that takes long: `python -m sleeper --checkpoint CKPT`."""

    name = "sleeping"
    module = "sleeper"

    def output_dir(self, trainer, ckpt):
        return ckpt.parent.parent / "jobs" / "sleeping"

    def argv(self, ckpt, out):
        return []


class Recorder(Callback):
    def __init__(self):
        self.aborted_with = None

    def on_train_abort(self, trainer, error):
        self.aborted_with = error


class FailsToo(Callback):
    def on_train_abort(self, trainer, error):
        raise RuntimeError("a callback's own failure")


def test_fit_tells_every_callback_why_training_died_and_reraises(caplog):
    recorder = Recorder()

    def dies():
        raise ValueError("boom at step 7")

    settled = []  # a checkpoint still being written is finished first
    fake = SimpleNamespace(callbacks=[FailsToo(), recorder], _fit=dies,
                           files=SimpleNamespace(saves=SimpleNamespace(settle=lambda: settled.append(True))))
    with caplog.at_level(logging.ERROR, logger="growlm"), pytest.raises(ValueError, match="boom at step 7"):
        Trainer.fit(fake)
    assert settled == [True]
    assert isinstance(recorder.aborted_with, ValueError)  # reached past the callback that failed
    assert "FailsToo failed while training was aborting" in caplog.text


@pytest.mark.process
def test_a_job_still_running_when_training_dies_is_reported(tmp_path, monkeypatch, caplog):
    (tmp_path / "sleeper.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    ckpt = tmp_path / "run" / "checkpoints" / "step_2"
    ckpt.mkdir(parents=True)
    job = SleepingJob(SimpleNamespace(every=1, mode="process"))
    cfg = SimpleNamespace(checkpoint=SimpleNamespace(every=2), train=SimpleNamespace(steps=10))
    trainer = SimpleNamespace(is_main=True, step=2, cfg=cfg)
    job.on_checkpoint_saved(trainer, ckpt)
    (proc, job_log), = job.running
    try:
        with caplog.at_level(logging.WARNING, logger="growlm"):
            job.on_train_abort(trainer, KeyboardInterrupt())
        assert f"sleeping job pid {proc.pid} still running while training died (KeyboardInterrupt)" in caplog.text
        assert str(job_log) in caplog.text and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
