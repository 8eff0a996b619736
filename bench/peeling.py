#!/usr/bin/env python
"""What a peeling job costs next to the training it watches: the default (fast) settings and the thorough ones.

In one process: a Trainer of the run's config takes steps (median step time x checkpoint.every = the training
time between two checkpoints), then the peeling core runs on that model's weights and the run's calibration
and held-out windows with each settings profile. Reported: seconds per job and the ratio to the checkpoint
interval (target for the default: <= 0.25). One process, one rank: the per-rank work of a multi-rank run's
step (the same micro-batch per rank) without its communication. On a shared CPU pin the threads.

    OMP_NUM_THREADS=1 python -m bench.peeling                        # configs/tiny.yaml
    OMP_NUM_THREADS=1 python -m bench.peeling --profiles default model.n_layers=8 model.tie_embeddings=false
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

from model import Llama
from pretrain.config import load_config
from pretrain.dist import init_distributed
from pretrain.probes.peeling.bounds import compute_bounds
from pretrain.probes.peeling.job import calibration_windows
from pretrain.probes.peeling.settings import THOROUGH, PeelingSettings
from pretrain.trainer import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml", help="run config giving model, data, train, checkpoint")
    p.add_argument("--steps", type=int, default=10, help="timed training steps after two warm-up steps")
    p.add_argument("--profiles", default="default,thorough", help="comma-separated: default, thorough")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = p.parse_args()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    init_distributed()
    out = tempfile.mkdtemp(prefix="growlm-bench-peeling-")
    cfg = load_config(args.config, [*args.overrides, "train.resume=never", "train.steps=1000000000", "eval.every=0",
                                    "monitors.jump.every=0", "log.tensorboard=false", "log.progress=none",
                                    f"run.out_dir={out}"])
    trainer = Trainer(cfg)
    times = []
    for i in range(args.steps + 2):
        start = time.perf_counter()
        trainer.train_step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    interval_s = step_s * cfg.checkpoint.every
    model = Llama(cfg.model)
    model.load_state_dict(trainer.engine.module.state_dict())
    model.eval()
    results = {"step_s": step_s, "checkpoint_every": cfg.checkpoint.every, "interval_s": interval_s, "profiles": {}}
    print(f"training: {step_s * 1e3:.1f} ms/step x {cfg.checkpoint.every} steps = {interval_s:.1f} s between "
          f"checkpoints ({cfg.model.n_layers} layers, dim {cfg.model.dim}, seq {cfg.data.seq_len})")
    profiles = {"default": PeelingSettings(), "thorough": PeelingSettings(**THOROUGH)}
    for name in args.profiles.split(","):
        settings = profiles[name]
        windows = calibration_windows(cfg, cfg.model, settings.calib_windows + settings.holdout_windows)
        start = time.perf_counter()
        bounds = compute_bounds(model, windows[:settings.calib_windows], settings,
                                holdout=windows[settings.calib_windows:])
        seconds = time.perf_counter() - start
        results["profiles"][name] = {"seconds": seconds, "ratio": seconds / interval_s, "rows": len(bounds.rows)}
        print(f"{name:9s} {len(bounds.rows):3d} rows {seconds:8.1f} s = {seconds / interval_s:6.2f} x the interval")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
