#!/usr/bin/env python
"""What seeing inside training costs: JREG's step-time overhead and the jump monitor's, side by side.

Trainers in one process on the same config, with JREG (`--jreg` as the regularizer entry) and without, take
steps in interleaved rounds (order alternating); the JREG overhead is the ratio of median step times minus one
(target <= 3%). Each side is built twice, in the order off, jreg, jreg, off: where a trainer's memory lands
moves its step time by several percent here (an off-vs-off pair differed by ~10%), and this cancels it. The jump monitor's measurement (one no-grad forward with hidden states on a
fixed validation batch) is timed between those steps and averaged over its interval: median measure time /
(every x median step time) (target <= 1%). On a shared CPU pin the threads (OMP_NUM_THREADS=1).

    OMP_NUM_THREADS=1 python -m bench.regularizers
    OMP_NUM_THREADS=1 python -m bench.regularizers --jreg "{name: jreg, weight: 0.1, variant: weighted}" \\
        model.dim=256 model.n_layers=6 data.seq_len=256
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

from pretrain import dist
from pretrain.config import load_config
from pretrain.dist import init_distributed
from pretrain.probes.jump.callback import JumpMonitor
from pretrain.trainer import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml", help="run config giving model, data and train")
    p.add_argument("--jreg", default="{name: jreg, weight: 0.1, variant: final}",
                   help="the regularizer entry of the JREG side (YAML flow mapping)")
    p.add_argument("--rounds", type=int, default=8, help="timed rounds after one warm-up round")
    p.add_argument("--k", type=int, default=3, help="steps per trainer per round")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. train.precision=fp32")
    args = p.parse_args()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    init_distributed()
    out = tempfile.mkdtemp(prefix="growlm-bench-reg-")
    common = [*args.overrides, "train.resume=never", "train.steps=1000000000", "eval.every=0",
              "monitors.trajectory.every=0", "log.tensorboard=false", "log.progress=none", f"run.out_dir={out}"]
    regs = {"off": "[]", "jreg": f"[{args.jreg}]"}
    trainers = {f"{side}{i}": Trainer(load_config(args.config, [*common, f"regularizers={regs[side]}",
                                                                f"run.name={side}{i}"]))
                for i, side in ((0, "off"), (0, "jreg"), (1, "jreg"), (1, "off"))}
    base = trainers["off0"]
    monitor = JumpMonitor(base.cfg.monitors.jump)
    every = base.cfg.monitors.jump.every
    if every <= 0:
        p.error("monitors.jump.every must be > 0 to price the monitor over its interval")

    steps: dict[str, list[float]] = {side: [] for side in regs}
    measures: list[float] = []
    for r in range(args.rounds + 1):
        for name in trainers if r % 2 == 0 else list(trainers)[::-1]:
            for _ in range(args.k):
                t0 = time.perf_counter()
                trainers[name].train_step()
                dist.synchronize()
                if r > 0:
                    steps[name[:-1]].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        monitor.measure(base)
        dist.synchronize()
        if r > 0:
            measures.append(time.perf_counter() - t0)

    off, on = statistics.median(steps["off"]), statistics.median(steps["jreg"])
    measure = statistics.median(measures)
    m = base.cfg.model
    print(f"dim={m.dim} layers={m.n_layers} micro={base.cfg.train.micro_batch_size} seq={base.cfg.data.seq_len} "
          f"{base.cfg.train.precision} ZeRO-{base.cfg.deepspeed.zero_stage} jreg={args.jreg}")
    print(f"step ms: off {off * 1e3:.1f}, jreg {on * 1e3:.1f}; jump measure ms {measure * 1e3:.1f} every {every} steps")
    print(f"JREG overhead           {on / off - 1:+.2%}   (target <= 3%)")
    print(f"jump monitor overhead   {measure / (every * off):.2%}   (target <= 1%, averaged over its interval)")


if __name__ == "__main__":
    main()
