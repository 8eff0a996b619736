#!/usr/bin/env python
"""What the online trajectory sketch costs: the trainer's step time with and without it, side by side.

One process, one rank, one Trainer: rounds of k plain steps alternate with rounds of k steps followed by the
sketch callback (monitors.trajectory with every=1, the worst case), so machine noise hits both alike;
medians after a warm-up round. The overhead at every=N is 1 + (ratio at every=1 - 1) / N.

    OMP_NUM_THREADS=1 python -m bench.trajectory          # tiny preset, as one CPU rank runs it
    python -m bench.trajectory --zero 3 --dim 512
"""
from __future__ import annotations

import argparse
import statistics
import time

from pretrain.config import load_config
from pretrain.dist import init_distributed
from pretrain.trainer import Trainer
from pretrain.probes.trajectory.online import TrajectorySketch
from pretrain.probes.trajectory.settings import TrajectoryConfig


def bench(args: argparse.Namespace) -> tuple[float, float, float]:
    """(median plain step s, median step + sketch s, median sketch alone s)."""
    cfg = load_config(args.config, [f"deepspeed.zero_stage={args.zero}", "train.resume=never", "eval.every=0",
                                    "monitors.jump.every=0", "log.tensorboard=false", f"run.out_dir={args.out}",
                                    "run.name=bench_trajectory", f"train.steps={10**6}", *args.overrides])
    trainer = Trainer(cfg)
    sketch = TrajectorySketch(TrajectoryConfig(every=1, dim=args.dim, granularity=args.granularity))
    plain, with_sketch, alone = [], [], []
    for _ in range(args.rounds):
        for _ in range(args.k):
            t0 = time.perf_counter()
            trainer.train_step()
            plain.append(time.perf_counter() - t0)
        for _ in range(args.k):
            t0 = time.perf_counter()
            trainer.train_step()
            t1 = time.perf_counter()
            sketch.on_step_end(trainer, {})
            t2 = time.perf_counter()
            with_sketch.append(t2 - t0)
            alone.append(t2 - t1)
    warm = args.k
    return statistics.median(plain[warm:]), statistics.median(with_sketch[warm:]), statistics.median(alone[warm:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--zero", type=int, default=1)
    p.add_argument("--dim", type=int, default=256, help="sketch dimension")
    p.add_argument("--granularity", default="component")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--k", type=int, default=5, help="steps per round per side")
    p.add_argument("--out", default="/tmp/growlm-bench")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = p.parse_args()
    init_distributed()
    plain, both, alone = bench(args)
    ratio = both / plain
    print(f"ZeRO-{args.zero}, d={args.dim}: plain step {plain * 1e3:.1f} ms, step + sketch {both * 1e3:.1f} ms "
          f"(sketch alone {alone * 1e3:.1f} ms)")
    print("overhead ratio  " + "  ".join(f"every={n}: {1 + (ratio - 1) / n:.3f}" for n in (1, 10, 50, 100)))


if __name__ == "__main__":
    main()
