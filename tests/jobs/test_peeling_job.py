"""Peeling as a job: the CLI on a weights folder (outputs, errors, the checkpoint left untouched) and the
trainer callback that schedules it (inline and as a detached process)."""
from __future__ import annotations

import hashlib
import inspect
import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from model import Llama, ModelConfig
from pretrain.config import load_config
from pretrain.probes.peeling.__main__ import main
from pretrain.probes.peeling.callback import PeelingJob
from pretrain.probes.peeling.settings import PeelingConfig
from pretrain.probes.registry import JOBS, build_plugins
from storage.weights import save_weights

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 512
CFG = ModelConfig(dim=32, n_layers=3, n_heads=2, n_kv_heads=1, ffn_dim=64, vocab_size=VOCAB, max_seq_len=64)
FAST = ["--variants", "fp,binary", "--steps", "3", "--calib-windows", "4", "--batch-windows", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def run_config(tmp_path_factory) -> Path:
    """A run config whose data is a small local text (the stdlib's argparse source): tokenizer trains in ~1 s."""
    root = tmp_path_factory.mktemp("peel_data")
    (root / "corpus.txt").write_text(inspect.getsource(__import__("argparse")))
    (root / "run.yaml").write_text(textwrap.dedent(f"""
        data: {{source: {root / 'corpus.txt'}, seq_len: 32, val_fraction: 0.1, num_proc: 1,
                cache_dir: {root / 'cache'}, tokenizer_sample_bytes: 200000}}
        """))
    return root / "run.yaml"


@pytest.fixture()
def weights(tmp_path) -> Path:
    torch.manual_seed(0)
    out = tmp_path / "models" / "tiny"
    save_weights(out, CFG, Llama(CFG).state_dict())
    return out


def tree_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_writes_outputs_and_leaves_the_checkpoint_alone(weights, run_config, capsys):
    before = tree_hash(weights)
    assert main(["--checkpoint", str(weights), "--config", str(run_config), "--layers", "1,2", *FAST,
                 "--offsets", "0,1", "--permutations", "forward,backward,swap"]) == 0
    assert tree_hash(weights) == before
    out = weights.parent / "jobs" / "peeling" / "tiny"
    data = json.loads((out / "bounds.json").read_text())
    assert {"method", "checkpoint", "step", "model_loss", "settings", "rows", "layers", "lazy_layers",
            "calib_windows", "seconds"} <= set(data)
    assert {"layer", "offset", "permutation", "variant", "bound", "model_loss", "fit_mse", "init_mse", "removes",
            "seconds", "holdout_bound"} == set(data["rows"][0])
    assert data["verdicts_scored_on"] == "held-out" and data["holdout_model_loss"] > 0
    # layers 1, 2 x offsets {0, 1} -> forward rows (1,0) (1,1) (2,0) (2,1), backward/swap (1,1) (2,1)
    assert len(data["rows"]) == 8 * 2 and {r["variant"] for r in data["rows"]} == {"fp", "binary"}
    assert data["calib_windows"] == 4 and data["model_loss"] > 0
    assert (out / "bounds.png").stat().st_size > 1000
    assert "removal bound" in capsys.readouterr().out


def test_summary_collects_steps(weights, run_config, tmp_path):
    """Weights folders named step_<N> carry their step; summary.png gathers every step's bounds.json."""
    for step in (10, 20):
        folder = tmp_path / "ckpts" / f"step_{step}"
        folder.mkdir(parents=True)
        for f in weights.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        assert main(["--checkpoint", str(folder), "--config", str(run_config), "--offsets", "1",
                     "--permutations", "forward", *FAST]) == 0
    peeling = tmp_path / "ckpts" / "jobs" / "peeling"
    assert json.loads((peeling / "step_20" / "bounds.json").read_text())["step"] == 20
    assert (peeling / "summary.png").stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "/nonexistent/ckpt"], "does not exist"),
    (["--variants", "fp,7bits"], "variant '7bits'"),
    (["--layers", "4"], "layers=[4] out of range"),
])
def test_cli_failures_name_the_problem(weights, run_config, capsys, args, message):
    argv = ["--checkpoint", str(weights), "--config", str(run_config), *FAST, *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def trainer(run_dir: Path, config_path: Path | None, step: int) -> SimpleNamespace:
    """What the callback reads from a Trainer: a checkpoint every 10 steps, 100 steps in all."""
    cfg = load_config(config_path, ["checkpoint.every=10", "train.steps=100"])
    return SimpleNamespace(is_main=True, step=step, cfg=cfg, run_dir=run_dir)


def test_inline_job_runs_on_schedule(weights, run_config, tmp_path):
    job = PeelingJob(PeelingConfig(every=2, mode="inline", offsets=[1], permutations=["forward"], variants=["fp"],
                                   steps=3, calib_windows=4, threads=1))
    out = weights.parent / "jobs" / "peeling" / weights.name  # where the CLI writes by default, too
    for step in (10, 20):
        job.on_checkpoint_saved(trainer(tmp_path, run_config, step), weights)
        ran = (out / "bounds.json").is_file()
        assert ran == (step == 20)  # every 2nd checkpoint (checkpoint.every=10): step 20, not step 10
    assert json.loads((out / "bounds.json").read_text())["rows"]


@pytest.mark.process
def test_failed_process_job_is_logged_and_never_raises(tmp_path, caplog):
    job = PeelingJob(PeelingConfig(every=1))
    missing = tmp_path / "checkpoints" / "step_10"
    job.on_checkpoint_saved(trainer(tmp_path, None, 10), missing)  # returns at once
    proc, job_log = job.running[0]
    assert proc.wait(timeout=120) == 2
    assert "does not exist" in job_log.read_text()
    job.on_train_end(trainer(tmp_path, None, 100), {})
    assert "exited with 2" in caplog.text and job.running == []


def test_jobs_config_builds_the_callback():
    section = JOBS.defaults()
    assert build_plugins((JOBS, section)) == []
    section.peeling.every = 3
    assert [type(job) for job in build_plugins((JOBS, section))] == [PeelingJob]
