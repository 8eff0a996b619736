"""Launching real 2-rank runs through `python -m launch` from tests, and reading what they wrote."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A tiny fp32 run: 2 ranks, fixed data, small enough that a launch costs little beyond start-up.
TINY_RUN = [
    "model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_dim=160",
    "model.vocab_size=512", "model.max_seq_len=64", "data.seq_len=32", "data.embedded_max_bytes=300000",
    "data.tokenizer_sample_bytes=300000", "train.micro_batch_size=4", "train.precision=fp32",
    "train.warmup_steps=2", "train.lr=3e-3", "log.every=1", "log.tensorboard=false", "log.progress=plain",
    "eval.batches=2",
]


# The uninterrupted 2-rank reference runs of tests/pretrain/test_trainer_distributed.py: JREG and the jump
# monitor ride along so every stage's run also exercises hidden states through DeepSpeed's forward.
UNCLIPPED_STEPS = 4
UNCLIPPED_RUN = ["train.grad_clip=0", "train.precision=fp32", "deepspeed.zero_stage=1", "train.schedule=constant",
                 "eval.every=0",
                 "monitors.jump.every=0", f"train.steps={UNCLIPPED_STEPS}", "checkpoint.every=1",
                 f"checkpoint.keep={UNCLIPPED_STEPS}"]
"""fp32, ZeRO-1, no clipping (whose global norm would mix in parameters a continued run adds or freezes), a
checkpoint every step: the reference whose next update a continued run must take exactly."""
ZERO_RUN_STEPS = 6
ZERO_RUN = [f"train.steps={ZERO_RUN_STEPS}", "checkpoint.every=3", "checkpoint.keep=3", "eval.every=3",
            "regularizers=[{name: jreg, weight: 0.1}]", "monitors.jump.every=3"]


def command(run_dir: Path, overrides: list[str], ranks: int | None = 2, config: str = "configs/tiny.yaml",
            launcher_args: list[str] | None = None, precheck: bool = False) -> list[str]:
    """`python -m launch --num_gpus RANKS ...` (or `python -m launch LAUNCHER_ARGS ...`), or with ranks=None a
    bare single-process `python -m pretrain`.

    With --num_gpus the launcher's own check (`python -m pretrain --check`: ~2 s of imports before the ranks
    start) runs only with `precheck`, for the tests of what it refuses: the ranks validate the same config and
    rank 0 prepares the data before the others read it, so every other run trains the same without it."""
    if launcher_args is not None:
        prefix = [sys.executable, "-m", "launch", *launcher_args]
    elif ranks is None:
        prefix = [sys.executable, "-m", "pretrain"]
    else:
        prefix = [sys.executable, "-m", "launch", "--num_gpus", str(ranks), *([] if precheck else ["--skip-check"])]
    return [*prefix, config, f"run.out_dir={run_dir.parent}", f"run.name={run_dir.name}",
            f"data.cache_dir={ROOT / '.cache' / 'growlm'}", *TINY_RUN, *overrides]


def environment(fault: str = "") -> dict[str, str]:
    return dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
                GROWLM_FAULT=fault, OMP_NUM_THREADS="1")


def launch(run_dir: Path, overrides: list[str], ranks: int | None = 2, config: str = "configs/tiny.yaml",
           check: bool = True, timeout: int = 600, fault: str = "", precheck: bool = False
           ) -> subprocess.CompletedProcess:
    """Run a training job into run_dir (its parent is out_dir); `fault` selects tests/fault_injection.py faults."""
    if fault:
        overrides = [*overrides, "imports=[fault_injection]"]
    proc = subprocess.run(command(run_dir, overrides, ranks, config, precheck=precheck), cwd=ROOT,
                          env=environment(fault), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"launch failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run_dir) if "loss" in r}
