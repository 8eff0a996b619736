"""Training on a weighted mixture of pre-tokenized corpora (growlm shards + Megatron .bin/.idx) with document
masking, on 2 ranks through the launcher: the realized mixture is logged and a resume continues exactly."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_corpora import write_megatron

from pretrain.data import DataConfig, prepare_data
from pretrain.data.__main__ import main as data_main

from launching import launch, losses, metrics

STEPS = 4


@pytest.fixture(scope="module")
def mixture(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("mixture")
    packed = prepare_data(DataConfig(cache_dir=str(root / "cache"), embedded_max_bytes=300_000, num_proc=1), 512)
    corpus = next((root / "cache" / "corpus").glob("*.jsonl"))
    assert data_main(["prepare", str(corpus), "--tokenizer", str(packed.tokenizer_path), "--out",
                      str(root / "pydoc"), "--shards", "2", "--procs", "1", "--cache-dir", str(root / "cache"),
                      "--val-fraction", "0.1"]) == 0
    web = write_megatron(root / "web", np.load(root / "pydoc" / "train" / "shard_00001.npy"))
    return [f"data.sources=[{{path: {root / 'pydoc'}, weight: 3}}, {{path: {web}, weight: 1}}]",
            "data.document_masking=true", "data.document_positions=document", f"train.steps={STEPS}",
            "checkpoint.every=2", "eval.every=2", "monitors.jump.every=0"]


@pytest.mark.numerics
@pytest.mark.distributed
def test_mixture_with_document_masking_trains_logs_its_mixture_and_resumes_exactly(mixture, runs_root):
    run = runs_root / "mixture"
    launch(run, mixture)
    records = [r for r in metrics(run) if "loss" in r]
    last = records[-1]
    drawn = last["data/pydoc/tokens"], last["data/web/tokens"]
    assert sum(drawn) == last["tokens"] and drawn[0] > drawn[1] > 0  # 3:1 by weight, every step full
    assert losses(run)[STEPS] < losses(run)[1]

    resumed = runs_root / "mixture_resumed"  # the same run, as if it had died right after step 2's save
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / f"step_{STEPS}")
    (resumed / "checkpoints" / "latest").write_text("step_2\n")
    kept = [line for line in (resumed / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 2]
    (resumed / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    launch(resumed, mixture)
    assert losses(resumed) == losses(run)
    assert metrics(resumed)[-1]["data/web/tokens"] == last["data/web/tokens"]


@pytest.mark.process
def test_mixture_config_round_trips_through_the_run_config(mixture, tmp_path):
    from pretrain.config import load_config, save_config

    cfg = load_config(None, [*mixture, "data.seq_len=32"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.data.sources == cfg.data.sources and Path(again.data.sources[1].path).name == "web"
