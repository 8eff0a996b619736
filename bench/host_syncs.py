#!/usr/bin/env python
"""Where a training step makes the host wait for the device: tensor -> Python conversions per step, by call site.

On a GPU each `.item()`, `float(t)`, `bool(t)`, `.tolist()` of a device tensor blocks the host until the queued
kernels finish; the GPU then idles while the host prepares the next launches. The same code runs on CPU, so
counting those conversions per step (and where they come from: our trainer, DeepSpeed, torch) finds the syncs
without a GPU. Steps are counted away from logging steps (log.every is set past the window), so what is listed
happens on *every* step.

    OMP_NUM_THREADS=1 python -m bench.host_syncs                       # tiny, auto precision, ZeRO-1
    python -m bench.host_syncs --precision bf16 --zero 3 --steps 5
"""
from __future__ import annotations

import argparse
import collections
import logging
import tempfile
import traceback
from pathlib import Path

import torch

from pretrain.config import load_config
from pretrain.dist import init_distributed
from pretrain.trainer import Trainer

CONVERSIONS = ("item", "tolist", "__bool__", "__float__", "__int__")
ROOT = str(Path(__file__).resolve().parent.parent)


def call_site() -> str:
    """The innermost frame outside torch itself: the code that asked for the value."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/torch/" not in frame.filename:
            where = frame.filename.replace(ROOT + "/", "")
            where = where.split("site-packages/")[-1]
            return f"{where}:{frame.lineno} ({frame.name})"
    return "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--zero", type=int, default=1, choices=[0, 1, 2, 3])
    p.add_argument("--steps", type=int, default=5, help="steps counted, after two warm-up steps")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    init_distributed()
    cfg = load_config(args.config, [*args.overrides, f"train.precision={args.precision}",
                                    f"deepspeed.zero_stage={args.zero}", "train.resume=never", "eval.every=0",
                                    "monitors.jump.every=0", "monitors.trajectory.every=0", "log.every=1000000",
                                    "log.tensorboard=false", "log.progress=none", f"run.out_dir={tempfile.mkdtemp()}"])
    trainer = Trainer(cfg)
    for _ in range(2):
        trainer.train_step()
    counts: collections.Counter[str] = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in CONVERSIONS}

    def counting(name):
        def convert(self, *a, **k):
            counts[f"{name:<9} {call_site()}"] += 1
            return originals[name](self, *a, **k)
        return convert

    for name in CONVERSIONS:
        setattr(torch.Tensor, name, counting(name))
    try:
        for _ in range(args.steps):
            trainer.train_step()
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
    print(f"{trainer.cfg.train.precision} ZeRO-{args.zero} grad_accum={cfg.train.grad_accum}: tensor->host "
          f"conversions per step over {args.steps} steps (each one a host sync on a GPU)")
    print("| per step | conversion and call site |\n|---:|---|")
    for site, n in counts.most_common():
        print(f"| {n / args.steps:g} | `{site}` |")
    if not counts:
        print("| 0 | none |")


if __name__ == "__main__":
    main()
