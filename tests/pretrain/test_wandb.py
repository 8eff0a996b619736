"""log.wandb: every metrics.jsonl scalar and the resolved config reach an offline W&B run; resume continues it."""
from __future__ import annotations

import math
import re
import time

import pytest

from pretrain.config import ConfigError, WandbConfig, load_config
from pretrain.metrics import MetricsLogger

pytest.importorskip("wandb")


def offline_runs(run_dir):
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def log_steps(run_dir, steps, config):
    logger = MetricsLogger(run_dir, total_steps=10, start_step=steps[0] - 1, enabled=True, tensorboard=False,
                           progress="none", wandb=WandbConfig(project="growlm-test", mode="offline"), config=config)
    for step in steps:
        logger.log({"step": step, "loss": 1.0 / step, "lm_loss_marker": step + 0.125, "grad_norm": math.nan})
    logger.close()


@pytest.mark.process
def test_offline_run_holds_metrics_and_config_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log_steps(run_dir, [1, 2, 3], {"train": {"micro_batch_size_marker": 8}})
    run_id = (run_dir / "wandb_id").read_text().strip()
    [first] = offline_runs(run_dir)
    assert first.name.endswith(run_id)
    # The run file is a record log of protobufs: keys and JSON values appear verbatim in it. wandb's own
    # service process writes it, and on a loaded machine may still be at it when finish() returns.
    deadline = time.time() + 60
    while b"3.125" not in (data := (first / f"run-{run_id}.wandb").read_bytes()) and time.time() < deadline:
        time.sleep(0.5)
    for needle in (b"lm_loss_marker", b"micro_batch_size_marker", b"3.125"):  # lm_loss_marker at step 3
        assert needle in data, needle
    log_steps(run_dir, [4, 5], {})  # a resumed run: same W&B id, a new offline segment to sync
    assert (run_dir / "wandb_id").read_text().strip() == run_id
    # A segment started within the same second as the previous one gets a "-1" suffix from wandb.
    assert [bool(re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", r.name))
            for r in offline_runs(run_dir)] == [True, True]


def test_mode_is_validated():
    with pytest.raises(ConfigError, match="log.wandb.mode"):
        load_config("configs/tiny.yaml", ["log.wandb.mode=sometimes"])
