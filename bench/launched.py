#!/usr/bin/env python
"""What a launched run pays beyond the step: real `python -m launch` runs (1 and 2 ranks) against the bare
PyTorch loop of bench/loops.py, in interleaved rounds on the same machine.

Each launched run writes `timing.json` (pretrain/metrics.py, PhaseTimes): its training loop's wall time by phase. Its
throughput is tokens over the loop's wall time less checkpoints and validation (reported apart), so collectives,
hooks, logging and data all count; start-up (imports, engine build) and teardown are reported apart too. The bare
loop runs in this process over the same windows, one thread, as every rank here gets one
(OMP_NUM_THREADS=1): launched/bare is then like for like at 1 rank, and a 2-rank run's per-rank figure against
1 rank's shows what the collectives cost. `bare-2` is two bare loops (processes) that average their gradients
with one flat gloo all-reduce a step, as a hand-written DDP would: the floor any 2-rank run here pays.

    python -m bench.launched                           # tiny config, fp32, 3 rounds of 100 steps
    python -m bench.launched --steps 300 --rounds 2 model.dim=128
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as tdist

from bench import loops  # its bare loop: the floor both benchmarks measure against
from model import Llama
from pretrain.config import load_config
from pretrain.cpu import cpu_name
from pretrain.data.pipeline import load_data
from storage import run_files

ROOT = Path(__file__).resolve().parent.parent

FIXED = ["train.precision=fp32", "eval.every=0", "monitors.jump.every=0", "checkpoint.every=0", "log.tensorboard=false",
         "log.progress=plain", "train.resume=never"]
"""What every side shares: fp32, no periodic validation, monitors or saves (the bare loop has none; the final
save is timed and left out)."""


def launched(ranks: int, config: str, steps: int, overrides: list[str], out: Path, name: str) -> dict:
    """One `python -m launch` run; its timing.json plus the seconds outside the training loop."""
    cmd = [sys.executable, "-m", "launch", "--num_gpus", str(ranks), config, f"train.steps={steps}",
           f"run.out_dir={out}", f"run.name={name}", *FIXED, *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"launch failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    timing = run_files.timing(out / name)
    timing["outside_loop_s"] = wall - timing["wall_s"]
    return timing


def bare(config: str, steps: int, overrides: list[str], out: Path,
         reduce_grads: Callable[[torch.nn.Module], None] | None = None) -> dict:
    """The bare loop over the run's own training windows: tokens/s over `steps` steps after 3 warm-up steps."""
    torch.set_num_threads(1)
    cfg = load_config(config, [*FIXED, *overrides, f"run.out_dir={out}", "run.name=bare"])
    windows = load_data(cfg).train
    micro = cfg.train.micro_batch_size
    batches = loops.window_batches(windows, micro, min(len(windows) // micro, 64))
    torch.manual_seed(cfg.run.seed)
    model = Llama(cfg.model)
    step = loops.bare_loop(model, lambda x: model(x).logits, cfg, batches, torch.device("cpu"), reduce_grads)
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    return {"tokens_per_s": steps * micro * cfg.train.grad_accum * cfg.data.seq_len / seconds}


def bare_ranks(config: str, steps: int, overrides: list[str], out: Path, ranks: int = 2) -> dict:
    """The floor of data parallelism here: `ranks` bare loops (processes, one thread each) that average their
    gradients with one flat gloo all-reduce per step, as a hand-written DDP would. tokens/s of all ranks."""
    port = 29500 + os.getpid() % 1000
    torch.multiprocessing.spawn(_bare_rank, args=(ranks, port, config, steps, overrides, out), nprocs=ranks)
    rates = [json.loads((out / f"bare-rank{r}.json").read_text())["tokens_per_s"] for r in range(ranks)]
    return {"tokens_per_s": sum(rates), "ranks": ranks}


def _bare_rank(rank: int, ranks: int, port: int, config: str, steps: int, overrides: list[str], out: Path) -> None:
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=ranks)

    result = bare(config, steps, overrides, out / f"bare-rank{rank}",
                  lambda model: loops.flat_all_reduce(model, tdist.all_reduce, ranks))
    tdist.destroy_process_group()
    (out / f"bare-rank{rank}.json").write_text(json.dumps(result))


def per_rank(timing: dict) -> float:
    return timing["tokens_per_s"] / timing["ranks"]


def report(results: dict[str, list[dict]]) -> None:
    med = {side: statistics.median(per_rank(r) if "ranks" in r else r["tokens_per_s"] for r in runs)
           for side, runs in results.items()}
    print(f"\n{'side':<12} {'tokens/s per rank':>18}   rounds")
    for side, runs in results.items():
        rounds = ", ".join(f"{per_rank(r) if 'ranks' in r else r['tokens_per_s']:,.0f}" for r in runs)
        print(f"{side:<12} {med[side]:>18,.0f}   {rounds}")
    print(f"\nlaunched-1/bare           {med['launched-1'] / med['bare']:.3f}   (target >= 0.95)")
    print(f"launched-2/launched-1     {med['launched-2'] / med['launched-1']:.3f}   per rank (target >= 0.90)")
    print(f"bare-2/bare               {med['bare-2'] / med['bare']:.3f}   per rank: what one gloo all-reduce a step "
          "leaves a hand-written loop")
    print(f"launched-2/bare-2         {med['launched-2'] / med['bare-2']:.3f}   per rank")
    print("\nms per step by phase (median over rounds; checkpoint and hook/Validation are left out of tokens/s)")
    sides = [s for s in results if s.startswith("launched")]
    phases = sorted({p for s in sides for r in results[s] for p in r["phases_s"]})
    print(f"{'phase':<22}" + "".join(f" {s:>11}" for s in sides))
    for phase in phases:
        cells = [statistics.median(r["phases_s"].get(phase, 0.0) / r["steps"] * 1e3 for r in results[s])
                 for s in sides]
        print(f"{phase:<22}" + "".join(f" {c:>11.2f}" for c in cells))
    print(f"{'outside the loop (s)':<22}"
          + "".join(f" {statistics.median(r['outside_loop_s'] for r in results[s]):>11.1f}" for s in sides))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--steps", type=int, default=100, help="training steps per launched run and per bare round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write every round's figures here")
    p.add_argument("overrides", nargs="*", help="config overrides key=value for every side")
    args = p.parse_args()
    print(f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"{args.rounds} rounds of {args.steps} steps")
    results: dict[str, list[dict]] = {"bare": [], "bare-2": [], "launched-1": [], "launched-2": []}
    with tempfile.TemporaryDirectory(prefix="growlm-bench-launched-") as tmp:
        out = Path(tmp)
        for r in range(args.rounds):
            order = list(results) if r % 2 == 0 else list(results)[::-1]
            for side in order:
                if side == "bare":
                    results[side].append(bare(args.config, args.steps, args.overrides, out))
                elif side == "bare-2":
                    results[side].append(bare_ranks(args.config, args.steps, args.overrides, out))
                else:
                    ranks = int(side.split("-")[1])
                    results[side].append(launched(ranks, args.config, args.steps, args.overrides, out,
                                                  f"{side}-r{r}"))
                print(f"round {r} {side}: {results[side][-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
