#!/usr/bin/env python
"""Where a 2-rank CPU step loses time to its 1-rank step: the same model and windows, every side in this one
launch, interleaved rounds, so machine noise lands on each alike.

  no-comm    the bare loop of bench/loops.py on each rank, no collective: two processes sharing the machine
  hand       the bare loop + one flat gloo all-reduce of the gradients (a hand-written DDP)
  hand-shm   the same through DeepSpeed's shared-memory all-reduce (its CPU inference op), where it is built
  zero-N     the trainer's own DeepSpeed engine (pretrain/engine.py) at ZeRO stage N

It also times one all-reduce of the gradients' size on each transport. Run it under the deepspeed launcher:

    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 --module bench.zero_comm
    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 --module bench.zero_comm --rounds 9 model.dim=128

Figures are medians over rounds of ms per optimizer step on rank 0, each with its ratio to no-comm and to hand.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import deepspeed.comm as ds_comm
import torch
import torch.distributed as tdist
import torch.nn.functional as F

from bench import loops  # its bare loop and its flat all-reduce
from model import Llama
from pretrain import dist
from pretrain.config import Config, load_config
from pretrain.cpu import cpu_name
from pretrain.data.pipeline import load_data
from pretrain.engine import build_engine

ROOT = Path(__file__).resolve().parent.parent

Reduce = Callable[[torch.Tensor], None]


def shm_all_reduce() -> Reduce | None:
    """DeepSpeed's shared-memory SUM all-reduce over this node's ranks, or None where its kernel is not built
    for this CPU (it then falls back to gloo inside, which would measure gloo twice)."""
    backend = ds_comm.comm.cdb
    if getattr(backend, "shm_comm_op", None) is None or getattr(backend, "shm_vector_kernel_level", 0) < 1:
        return None
    return ds_comm.inference_all_reduce


def rank_batches(cfg: Config, n: int) -> list[torch.Tensor]:
    """`n` micro-batches of this rank's own training windows (ranks read disjoint windows, as in a run)."""
    micro = cfg.train.micro_batch_size
    return loops.window_batches(load_data(cfg).train, micro, n, offset=dist.rank() * n * micro)


def engine_step(config: str, overrides: list[str], stage: int, batches: list[torch.Tensor]) -> Callable[[], None]:
    """One optimizer step of the trainer's engine at ZeRO `stage` (same init seed as the bare sides)."""
    cfg = load_config(config, [*overrides, f"deepspeed.zero_stage={stage}"])
    torch.manual_seed(cfg.run.seed)
    engine, _, _ = build_engine(Llama(cfg.model), cfg)
    state = {"i": 0}

    def step() -> None:
        tokens = batches[state["i"] % len(batches)]
        state["i"] += 1
        loss = F.cross_entropy(engine(tokens[:, :-1]).logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        engine.backward(loss)
        engine.step()

    return step


def bare_step(cfg: Config, batches: list[torch.Tensor], reduce: Reduce | None) -> Callable[[], None]:
    torch.manual_seed(cfg.run.seed)
    model = Llama(cfg.model)
    grads_reduce = None if reduce is None else (lambda m: loops.flat_all_reduce(m, reduce, dist.world_size()))
    return loops.bare_loop(model, lambda x: model(x).logits, cfg, batches, torch.device("cpu"), grads_reduce)


def transport_ms(numel: int, reduce: Reduce, repeats: int = 30) -> float:
    """Median ms of one SUM all-reduce of `numel` fp32 values, every rank starting together."""
    times = []
    for _ in range(repeats):
        flat = torch.randn(numel)
        tdist.barrier()
        t0 = time.perf_counter()
        reduce(flat)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--steps", type=int, default=15, help="optimizer steps per side per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    p.add_argument("overrides", nargs="*", help="config overrides key=value (fp32 unless train.precision says)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    dist.init_distributed()
    if dist.world_size() < 2:
        sys.exit("run it under the deepspeed launcher with 2 or more ranks (see --help)")
    with tempfile.TemporaryDirectory(prefix="growlm-bench-zero-comm-") as tmp:
        overrides = ["train.precision=fp32", *args.overrides, f"run.out_dir={tmp}", "run.name=bench"]
        cfg = load_config(args.config, overrides)
        batches = rank_batches(cfg, 16)
        gloo: Reduce = tdist.all_reduce
        shm = shm_all_reduce()
        sides = {"no-comm": bare_step(cfg, batches, None), "hand": bare_step(cfg, batches, gloo)}
        if shm is not None:
            sides["hand-shm"] = bare_step(cfg, batches, shm)
        for stage in (0, 1, 2):
            sides[f"zero-{stage}"] = engine_step(args.config, overrides, stage, batches)
        times: dict[str, list[float]] = {name: [] for name in sides}
        for step in sides.values():  # warm-up: optimizer state, allocator
            for _ in range(3):
                step()
        for r in range(args.rounds):
            for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                tdist.barrier()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    sides[name]()
                times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
        numel = cfg.model.num_params()
        transports = {"gloo": transport_ms(numel, gloo)} | ({"shm": transport_ms(numel, shm)} if shm else {})
    if dist.rank() != 0:
        return
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"{cpu_name()}, {dist.world_size()} ranks, torch {torch.__version__}; {args.rounds} rounds of "
          f"{args.steps} steps; {numel / 1e6:.2f} M parameters, fp32")
    print(f"\n{'side':<10} {'ms/step':>8} {'no-comm/side':>13} {'hand/side':>10}   rounds")
    for name, ms in med.items():
        rounds = ", ".join(f"{t:.1f}" for t in times[name])
        print(f"{name:<10} {ms:>8.1f} {med['no-comm'] / ms:>13.3f} {med['hand'] / ms:>10.3f}   {rounds}")
    print("\none all-reduce of the gradients' size: "
          + ", ".join(f"{name} {ms:.2f} ms" for name, ms in transports.items()))
    if shm is None:
        print("(DeepSpeed's shared-memory all-reduce is not built for this CPU: hand-shm and shm left out)")


if __name__ == "__main__":
    main()
