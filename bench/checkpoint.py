#!/usr/bin/env python
"""How long a checkpoint save stalls the training loop: synchronous vs `checkpoint.async_save`, on one run.

One process, one Trainer (one model, one sequence of steps). Each round times k plain steps, then a
synchronous save followed by k steps, then k plain steps again, then an asynchronous save followed by k steps
and the wait for it to be published (a write that outlasts the k steps is stall that a save every k steps
meets). A save's stall is its window's time minus the plain steps' just before it: the save call itself plus
whatever the write costs the steps beside it (a background thread shares the cores). The page cache is
flushed (os.sync) before each plain block, so one save's writes do not slow the next block. Medians over the
rounds; on a machine shared with other jobs, take many rounds.

    OMP_NUM_THREADS=1 python -m bench.checkpoint             # ~72 MB checkpoints, a few minutes
    python -m bench.checkpoint --rounds 30 model.dim=384
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import torch

from pretrain.async_save import AsyncSaves
from pretrain.checkpoint import Saves
from pretrain.config import load_config
from pretrain.cpu import cpu_name
from pretrain.dist import init_distributed
from pretrain.trainer import Trainer
from storage import folders

MODEL = ["model.dim=256", "model.n_layers=6", "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_dim=688",
         "model.vocab_size=512", "model.max_seq_len=64", "data.seq_len=32", "data.embedded_max_bytes=300000",
         "data.tokenizer_sample_bytes=300000", "train.micro_batch_size=1", "train.precision=fp32"]
"""~4.7M parameters (fp32 weights, master copy and Adam moments: a ~72 MB checkpoint) trained on 32 tokens a
step: a save takes several steps' time, as a large model's does on an accelerator."""


def timed_steps(trainer: Trainer, k: int) -> float:
    """k training steps as the loop runs them (it asks for completed saves at every step end): seconds."""
    t0 = time.perf_counter()
    for _ in range(k):
        trainer.train_step()
        trainer.files.saves.completed()
    return time.perf_counter() - t0


def stall(trainer: Trainer, saves: Saves, k: int) -> tuple[float, float]:
    """(seconds one save with `saves` costs the loop, seconds of its save call alone): a window of (save,
    k steps, its publication) against the k plain steps just before it."""
    os.sync()
    plain = timed_steps(trainer, k)
    trainer.files.saves = saves
    t0 = time.perf_counter()
    trainer.save()
    call = time.perf_counter() - t0
    timed_steps(trainer, k)
    saves.completed(wait=True)
    return time.perf_counter() - t0 - plain, call


def bench(args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    """Every save's (stall, save call), synchronous and asynchronous, round after round."""
    cfg = load_config(args.config, ["train.resume=never", "eval.every=0", "monitors.jump.every=0",
                                    "log.tensorboard=false", "log.progress=none", f"run.out_dir={args.out}",
                                    "run.name=bench_checkpoint", f"train.steps={10**6}", "checkpoint.keep=2",
                                    *MODEL, *args.overrides])
    trainer = Trainer(cfg)
    modes = {"sync": trainer.files.saves,
             "async": AsyncSaves(trainer.files.checkpoints, cfg.checkpoint.keep, cfg.deepspeed.collective_timeout_s)}
    timed_steps(trainer, args.k)  # warm-up
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name, saves in modes.items():
            out[name].append(stall(trainer, saves, args.k))
    return out


def checkpoint_mb(root: Path) -> float:
    _, newest = folders.complete_checkpoints(root)[-1]
    return sum(p.stat().st_size for p in newest.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--k", type=int, default=4, help="steps after each save")
    p.add_argument("--out", default="/tmp/growlm-bench", help="its bench_checkpoint/ folder is replaced")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = p.parse_args()
    shutil.rmtree(Path(args.out) / "bench_checkpoint", ignore_errors=True)  # a fresh run, not a resume
    init_distributed()
    load_before = os.getloadavg()[0]
    per_save = bench(args)
    size = checkpoint_mb(Path(args.out) / "bench_checkpoint" / "checkpoints")
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}); "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; checkpoint {size:.0f} MB; a save "
          f"every {args.k} steps; medians over {args.rounds} saves each")
    median = {}
    for name, values in per_save.items():
        median[name] = statistics.median(v for v, _ in values)
        print(f"  {name:5s}: the loop stalls {median[name] * 1e3:6.1f} ms per save, of which the save call "
              f"{statistics.median(c for _, c in values) * 1e3:6.1f} ms (each stall: "
              f"{' '.join(f'{v * 1e3:.0f}' for v, _ in values)})")
    print(f"  async / sync stall: {median['async'] / median['sync']:.2f}")


if __name__ == "__main__":
    main()
