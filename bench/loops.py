#!/usr/bin/env python
"""What one training step costs: the same model and batches through three loops, side by side.

  bare     our Llama + torch AdamW in a plain PyTorch loop (autocast under bf16): the floor to beat
  trainer  our Trainer.train_step() under DeepSpeed at --zero (what a run executes)
  hf       transformers' LlamaForCausalLM of the same shape and weights, in the same plain loop

All three live in one process and run in interleaved rounds (the order alternates), so machine noise lands
on each alike; figures are medians after a warm-up round. Ratios are of tokens/s: trainer/bare (target
>= 0.90) and bare/hf for the whole step and for forward+backward alone (target >= 1.0). On a GPU (cuda,
bf16) it also prints MFU against the data-sheet peak (pretrain/metrics.py) and against a measured bf16
matmul. On a shared CPU pin the threads: OMP_NUM_THREADS=1 gives the steadiest ratios.

    OMP_NUM_THREADS=1 python -m bench.loops                                       # tiny, auto precision, ZeRO-1
    OMP_NUM_THREADS=1 python -m bench.loops --precision fp32 model.dim=256 model.n_layers=6 data.seq_len=256
    python -m bench.loops --profile 15                                            # + top ops per loop
    python -m bench.loops model=1b data.seq_len=2048 train.micro_batch_size=4     # one GPU (bench/gpu.sh)
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from model import Llama
from model.hf import to_hf_config, to_hf_state_dict
from pretrain import dist, precision
from pretrain.config import Config, load_config
from pretrain.dist import init_distributed
from pretrain.metrics import detect_peak_tflops
from pretrain.optim import build_optimizer
from pretrain.trainer import Trainer

Step = Callable[[], float]
"""Runs one optimizer step; returns the seconds its forward+backward took (NaN where not separable)."""


@dataclass
class Side:
    """One loop under test and what was measured of it."""

    step: Step
    resident_gb: float = 0.0
    """Memory it holds between steps (model, grads, optimizer state), measured as it was built."""
    step_s: list[float] = field(default_factory=list)
    fwd_bwd_s: list[float] = field(default_factory=list)
    peak_gb: float = 0.0


def allocated_gb(device: torch.device) -> float:
    """Accelerator memory in use now; on CPU the process's peak RSS (the closest stable figure)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def window_batches(windows: np.ndarray, micro: int, n: int, offset: int = 0) -> list[torch.Tensor]:
    """`n` consecutive micro-batches of training windows from window `offset` on, as int64 token tensors."""
    return [torch.as_tensor(windows[offset + i * micro:offset + (i + 1) * micro].astype("int64")) for i in range(n)]


def flat_all_reduce(model: nn.Module, reduce: Callable[[torch.Tensor], object], world: int) -> None:
    """Data parallelism by hand: every gradient in one flat buffer, summed over ranks by `reduce` (in place),
    averaged, copied back. The floor any data-parallel step pays here (bench/launched.py,
    bench/zero_comm.py)."""
    grads = [p.grad for p in model.parameters()]
    flat = _flatten_dense_tensors(grads)
    reduce(flat)
    flat.div_(world)
    for grad, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(reduced)


def bare_loop(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], cfg: Config,
              batches: list[torch.Tensor], device: torch.device,
              reduce_grads: Callable[[nn.Module], None] | None = None) -> Step:
    """A plain PyTorch step (AMP autocast for bf16, fp32 masters, train.grad_accum micro-batches, clipping,
    AdamW) cycling over `batches`; `forward` maps input ids to logits. `reduce_grads` runs between the backward
    and the clipping (data parallelism by hand: bench/launched.py's two-rank floor)."""
    opt = build_optimizer(model, cfg.train)
    autocast = cfg.train.precision == "bf16"
    accum = cfg.train.grad_accum
    state = {"i": 0}

    def step() -> float:
        t0 = time.perf_counter()
        for _ in range(accum):
            tokens = batches[state["i"] % len(batches)]
            state["i"] += 1
            with torch.autocast(device.type, dtype=torch.bfloat16) if autocast else nullcontext():
                logits = forward(tokens[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
            (loss / accum).backward()
        dist.synchronize(device)
        fwd_bwd = time.perf_counter() - t0
        if reduce_grads is not None:
            reduce_grads(model)
        if cfg.train.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return fwd_bwd

    return step


def build_sides(cfg: Config, device: torch.device, n_batches: int, with_hf: bool) -> dict[str, Side]:
    """Trainer first (it owns the data), then the bare loops on the same initial weights and real batches."""
    sides: dict[str, Side] = {}

    def add(name: str, build: Callable[[], Step]) -> None:
        """Build a side and take one step, so lazily made state (Adam moments, kernels) counts as resident."""
        dist.synchronize(device)
        before = allocated_gb(device)
        step = build()
        step()
        dist.synchronize(device)
        sides[name] = Side(step, resident_gb=allocated_gb(device) - before)

    holder: dict[str, Trainer] = {}

    def trainer_side() -> Step:
        holder["t"] = trainer = Trainer(cfg)

        def step() -> float:
            trainer.train_step()
            return float("nan")  # forward and backward interleave with DeepSpeed's hooks: not split

        return step

    add("trainer", trainer_side)
    data = holder["t"].data.train
    micro = cfg.train.micro_batch_size
    batches = [torch.as_tensor(data[(i * micro) % (len(data) - micro + 1):][:micro].astype("int64")).to(device)
               for i in range(n_batches * cfg.train.grad_accum)]
    torch.manual_seed(cfg.run.seed)
    ours = Llama(cfg.model).to(device)
    weights = {k: v.detach().clone() for k, v in ours.state_dict().items()}
    if cfg.train.compile:  # as the trainer does (pretrain/engine.py), so the comparison stays like for like
        for block in ours.layers:
            block.compile()
    add("bare", lambda: bare_loop(ours, lambda x: ours(x).logits, cfg, batches, device))
    if with_hf:
        from transformers import LlamaForCausalLM

        def hf_side() -> Step:
            hf = LlamaForCausalLM._from_config(to_hf_config(cfg.model), attn_implementation="sdpa")
            hf.load_state_dict(to_hf_state_dict(weights), strict=True)
            hf = hf.to(device).train()
            return bare_loop(hf, lambda x: hf(input_ids=x, use_cache=False).logits, cfg, batches, device)

        add("hf", hf_side)
    return sides


def run_rounds(sides: dict[str, Side], rounds: int, k: int, device: torch.device) -> None:
    """`k` steps per side per round, order reversed every other round; round 0 is warm-up."""
    names = list(sides)
    for r in range(rounds + 1):
        for name in names if r % 2 == 0 else names[::-1]:
            side = sides[name]
            dist.synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start_gb = allocated_gb(device)
            for _ in range(k):
                t0 = time.perf_counter()
                fwd_bwd = side.step()
                dist.synchronize(device)
                if r > 0:
                    side.step_s.append(time.perf_counter() - t0)
                    side.fwd_bwd_s.append(fwd_bwd)
            if device.type == "cuda":
                transient = torch.cuda.max_memory_allocated(device) / 2**30 - start_gb
                side.peak_gb = max(side.peak_gb, side.resident_gb + transient)
            else:
                side.peak_gb = side.resident_gb


def profile_sides(sides: dict[str, Side], k: int, rows: int, device: torch.device) -> None:
    """Top operators by self time over `k` steps of each loop: where each one's time goes."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for name, side in sides.items():
        with profile(activities=activities) as prof:
            for _ in range(k):
                side.step()
            dist.synchronize(device)
        print(f"\n== {name}: top {rows} operators over {k} steps")
        print(prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60))


def matmul_tflops(device: torch.device, n: int = 8192, reps: int = 20) -> float:
    """Measured bf16 matmul throughput: the practical ceiling MFU is also quoted against."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    dist.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    dist.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def report(sides: dict[str, Side], cfg: Config, device: torch.device, zero: int) -> None:
    tokens = cfg.train.micro_batch_size * cfg.train.grad_accum * cfg.data.seq_len
    flops = cfg.model.flops_per_token(cfg.data.seq_len)
    peaks = {}
    if device.type == "cuda":
        peaks = {"mfu/sheet": detect_peak_tflops(), "mfu/matmul": matmul_tflops(device)}
        print("peaks (TFLOP/s): " + ", ".join(f"{k[4:]}={v:.0f}" for k, v in peaks.items() if v))
    mem = "peak GB" if device.type == "cuda" else "RSS+ GB"
    print(f"{'loop':<8} {'tok/s':>10} {'step ms':>9} {'fwd+bwd ms':>11} {mem:>8}"
          + "".join(f" {k:>10}" for k, v in peaks.items() if v))
    med = {name: statistics.median(s.step_s) for name, s in sides.items()}
    fb = {name: statistics.median(s.fwd_bwd_s) for name, s in sides.items()}
    for name, side in sides.items():
        tps = tokens / med[name]
        row = f"{name:<8} {tps:>10,.0f} {med[name] * 1e3:>9.1f} {fb[name] * 1e3:>11.1f} {side.peak_gb:>8.2f}"
        row += "".join(f" {tps * flops / 1e12 / v:>10.1%}" for v in peaks.values() if v)
        print(row)
    print(f"trainer/bare tok/s      {med['bare'] / med['trainer']:.3f}   (target >= 0.90; ZeRO-{zero})")
    if "hf" in sides:
        print(f"bare/hf tok/s (step)    {med['hf'] / med['bare']:.3f}")
        print(f"bare/hf fwd+bwd         {fb['hf'] / fb['bare']:.3f}   (target >= 1.0)")
    if device.type == "cpu":
        print("RSS+ GB: growth of the process's peak RSS while building that loop and taking its first step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml", help="run config giving model, data and train")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 where the device computes it natively, else fp32 (as train.precision); "
                        "bf16: DeepSpeed bf16 for the trainer, autocast for the bare loops")
    p.add_argument("--zero", type=int, choices=[0, 1, 2, 3], default=1, help="the trainer's ZeRO stage")
    p.add_argument("--rounds", type=int, default=6, help="timed rounds after one warm-up round")
    p.add_argument("--k", type=int, default=3, help="steps per loop per round")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: OMP_NUM_THREADS)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers loop")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="after timing, print the top ROWS operators of each loop (torch.profiler)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. model.dim=256 data.seq_len=256")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    out = tempfile.mkdtemp(prefix="growlm-bench-")
    cfg = load_config(args.config, [
        *args.overrides, f"train.precision={args.precision}", f"deepspeed.zero_stage={args.zero}",
        "train.resume=never", "train.steps=1000000000", "eval.every=0", "monitors.jump.every=0",
        "monitors.trajectory.every=0", "log.tensorboard=false", "log.progress=none", f"run.out_dir={out}",
        "run.name=bench",
    ])
    init_distributed()
    device = dist.device()
    cfg, choice = precision.resolve(cfg, device)
    print(f"precision: {choice.precision} ({choice.reason})")
    m = cfg.model
    print(f"dim={m.dim} layers={m.n_layers} heads={m.n_heads}/{m.n_kv_heads} vocab={m.vocab_size} "
          f"params={m.num_params():,} micro={cfg.train.micro_batch_size}x{cfg.train.grad_accum} seq={cfg.data.seq_len} "
          f"{cfg.train.precision} ZeRO-{args.zero} device={device} threads={torch.get_num_threads()} "
          f"torch={torch.__version__}")
    sides = build_sides(cfg, device, args.k, with_hf=not args.no_hf)
    run_rounds(sides, args.rounds, args.k, device)
    report(sides, cfg, device, args.zero)
    if args.profile:
        profile_sides(sides, args.k, args.profile, device)


if __name__ == "__main__":
    main()
