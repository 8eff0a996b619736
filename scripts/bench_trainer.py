#!/usr/bin/env python
"""What the framework costs: our trainer's step vs a bare PyTorch loop on the same model and batches.

One process, one rank (DeepSpeed engine at the chosen ZeRO stage vs torch AdamW on a plain module), steps
interleaved in rounds so machine noise hits both alike; medians after warm-up.

    python scripts/bench_trainer.py                        # tiny preset, fp32 and bf16, ZeRO-1
    python scripts/bench_trainer.py --zero 2 --micro 16 --precision fp32
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from model import Llama  # noqa: E402
from pretrain.config import load_config  # noqa: E402
from pretrain.optim import build_optimizer  # noqa: E402
from pretrain.trainer import Trainer, init_distributed  # noqa: E402


def bare_step(model: Llama, opt: torch.optim.Optimizer, tokens: torch.Tensor, bf16: bool, clip: float) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(tokens[:, :-1]).logits
    loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench(precision: str, args: argparse.Namespace) -> tuple[float, float]:
    """(median trainer step seconds, median bare step seconds)."""
    cfg = load_config(args.config, [f"train.precision={precision}", f"deepspeed.zero_stage={args.zero}",
                                    f"train.micro_batch_size={args.micro}", "train.resume=never", "eval.every=0",
                                    "monitors.jump.every=0", "log.tensorboard=false", f"run.out_dir={args.out}",
                                    f"run.name=bench_{precision}", f"train.steps={10**6}", *args.overrides])
    trainer = Trainer(cfg)
    torch.manual_seed(cfg.run.seed)
    bare = Llama(cfg.model)
    opt = build_optimizer(bare, cfg.train)
    batches = [torch.as_tensor(trainer.data.train[i * args.micro:(i + 1) * args.micro].astype("int64"))
               for i in range(args.k)]
    ours, theirs = [], []
    for r in range(args.rounds):
        for _ in range(args.k):
            t0 = time.perf_counter()
            trainer.train_step()
            ours.append(time.perf_counter() - t0)
        for tokens in batches:
            t0 = time.perf_counter()
            bare_step(bare, opt, tokens, precision == "bf16", cfg.train.grad_clip)
            theirs.append(time.perf_counter() - t0)
    warm = args.k  # drop the first round
    return statistics.median(ours[warm:]), statistics.median(theirs[warm:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--zero", type=int, default=1)
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--k", type=int, default=5, help="steps per round per side")
    p.add_argument("--out", default="/tmp/growlm-bench")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    init_distributed()
    seq = load_config(args.config, args.overrides).data.seq_len
    tokens = args.micro * seq
    print(f"{'precision':>9} {'trainer tok/s':>14} {'bare tok/s':>11} {'ratio':>6}  (ZeRO-{args.zero}, micro {args.micro}, seq {seq})")
    for precision in (["fp32", "bf16"] if args.precision == "both" else [args.precision]):
        ours, bare = bench(precision, args)
        print(f"{precision:>9} {tokens / ours:>14.0f} {tokens / bare:>11.0f} {bare / ours:>6.3f}")


if __name__ == "__main__":
    main()
