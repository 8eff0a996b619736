"""Continued pretraining of an open-weight folder through the real launcher: 2 CPU ranks, ZeRO-1 and ZeRO-3
(parameters filled shard by shard from the safetensors), the folder's own tokenizer; and LAG's candidates grown
from such a folder."""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F
import pytest

from hf_folders import open_weight_folder
from launching import launch, metrics

STEPS = 6


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return open_weight_folder(tmp_path_factory.mktemp("open") / "llama", tie=False, dtype=torch.bfloat16,
                              shard=True)


def hf_validation_loss(folder, run) -> float:
    """The folder's own model on the run's step-0 validation windows (as pretrain.callbacks.Validation picks
    them: eval.batches micro-batches per rank, 2 ranks)."""
    from transformers import AutoModelForCausalLM

    from pretrain.config import load_config
    from pretrain.data import get_batch, prepare_data

    cfg = load_config(run / "config.yaml")
    val = prepare_data(cfg.data, cfg.model.vocab_size).val
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    micro, losses = cfg.train.micro_batch_size, []
    with torch.no_grad():
        for b in range(cfg.eval.batches * 2):
            tokens = get_batch(val, (torch.arange(b * micro, (b + 1) * micro) % len(val)).numpy())
            logits = model(tokens[:, :-1]).logits
            losses.append(F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()))
    return torch.stack(losses).mean().item()


@pytest.mark.distributed
@pytest.mark.parametrize("stage", [1, pytest.param(3, marks=pytest.mark.slow)])  # ZeRO-3 continued pretraining: the slow suite
def test_continued_pretraining_from_an_open_weight_folder(folder, runs_root, stage):
    run = runs_root / f"open_weights_zero{stage}"
    launch(run, [f"model={folder}", f"train.init_from={folder}", f"data.tokenizer={folder}",
                 f"deepspeed.zero_stage={stage}", f"train.steps={STEPS}", "eval.every=3", "checkpoint.every=0"])
    val = {r["step"]: r["val/loss"] for r in metrics(run) if "val/loss" in r}
    assert abs(val[0] - hf_validation_loss(folder, run)) < 1e-4  # the run starts from the folder's function
    assert val[STEPS] < val[0] - 0.05  # and continues training it
    ckpt = run / "checkpoints" / f"step_{STEPS}"
    assert (ckpt / "tokenizer.json").is_file() and not (ckpt / "tokenizer.model").exists()


@pytest.mark.distributed
@pytest.mark.slow  # three launches; LAG itself is in the default suite (tests/experiments/test_lag_choice.py)
def test_lag_grows_its_candidates_from_an_open_weight_folder(folder, runs_root):
    """`growth lag --from HF_FOLDER`: every candidate is grown from the folder's weights and trained with its
    tokenizer; the exactly function-preserving zero_block starts at the folder's own validation loss."""
    from experiments.__main__ import main
    from launching import TINY_RUN

    out = runs_root / "lag_open_weights"
    overrides = [o for o in TINY_RUN if not o.startswith("model.")]
    assert main(["lag", "--from", str(folder), "--config", "configs/tiny.yaml", "--to", "n_layers=4",
                 "--pool", "stack,zero_block", "--lag-steps", "1", "--out", str(out), *overrides]) == 0
    curves = {name: {r["step"]: r["val/loss"] for r in metrics(out / "runs" / name) if "val/loss" in r}
              for name in ("stack", "zero_block")}
    assert curves["zero_block"][0] == pytest.approx(hf_validation_loss(folder, out / "runs" / "zero_block"), abs=1e-4)
    assert abs(curves["stack"][0] - curves["zero_block"][0]) > 1e-3
    report = json.loads((out / "lag.json").read_text())
    assert report["winner"] == min(curves, key=lambda n: curves[n][1])
    assert (out / "tokenizer.json").is_file()  # the folder's tokenizer, pinned for every candidate
