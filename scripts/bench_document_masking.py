#!/usr/bin/env python
"""What document masking costs per training step: the same model and packed windows, forward + backward,
plain causal attention against block-causal (data.document_masking) with and without per-document positions.

    OMP_NUM_THREADS=2 python scripts/bench_document_masking.py                 # tiny model, seq_len 256
    python scripts/bench_document_masking.py model.dim=512 model.n_layers=8 data.seq_len=1024

Interleaved rounds in one process (the order alternates), medians after a warm-up round; the ratio is of step
times against the plain causal step. Block-causal attention goes through SDPA with a boolean mask, which on
GPU cannot use the flash kernel: the GPU figure is the one to watch (scripts/gpu_bench.sh).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch.nn.functional as F

from model import Llama
from model.llama import document_layout
from pretrain import dist
from pretrain.config import load_config
from pretrain.data import get_batch, prepare_data
from pretrain.data.tokenizer import eos_id_of


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    p.add_argument("overrides", nargs="*", help="config overrides (model.*, data.seq_len, train.micro_batch_size)")
    args = p.parse_args()
    cfg = load_config("configs/tiny.yaml", ["data.seq_len=256", f"run.out_dir={tempfile.mkdtemp()}",
                                            *args.overrides])
    device = dist.device()
    data = prepare_data(cfg.data, cfg.model.vocab_size)
    eos = eos_id_of(data.tokenizer_path)
    tokens = get_batch(data.train, range(cfg.train.micro_batch_size)).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    model = Llama(cfg.model).to(device)

    def step(documents: bool, restart: bool) -> float:
        dist.synchronize(device)
        t0 = time.perf_counter()
        kwargs = {}
        if documents:
            ids, positions = document_layout(inputs, eos)
            kwargs = {"documents": ids, **({"positions": positions} if restart else {})}
        logits = model(inputs, **kwargs).logits
        F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).backward()
        dist.synchronize(device)
        return time.perf_counter() - t0

    variants = {"causal": (False, False), "document mask": (True, False), "document mask + positions": (True, True)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds + 1):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            for _ in range(args.steps):
                seconds = step(*variants[name])
                if r:  # round 0 warms up
                    times[name].append(seconds)
    docs = (inputs == eos).sum(dim=1).float().mean().item() + 1
    base = statistics.median(times["causal"])
    print(f"model dim {cfg.model.dim} x {cfg.model.n_layers} layers, {tuple(inputs.shape)} tokens, "
          f"{docs:.1f} documents per window on average, {device}")
    print("| variant | step ms (median) | vs causal |\n|---|---:|---:|")
    for name in variants:
        median = statistics.median(times[name])
        print(f"| {name} | {1e3 * median:.1f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
