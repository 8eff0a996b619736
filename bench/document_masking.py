#!/usr/bin/env python
"""What document masking costs: the same model and packed windows, plain causal attention against block-causal
(data.document_masking) through each kernel of train.document_attention, forward alone and forward + backward.

    OMP_NUM_THREADS=2 python -m bench.document_masking                 # tiny model, seq_len 256
    python -m bench.document_masking model.dim=512 model.n_layers=8 data.seq_len=1024
    python -m bench.document_masking --bf16 model=125m data.seq_len=2048   # on a GPU (gpu_bench.sh)

Interleaved rounds in one process (the order alternates), medians after a warm-up round; ratios are of times
against the plain causal pass. `dense` is SDPA with a boolean [batch, 1, seq, seq] mask, which on GPU cannot use
the flash kernel; `flex` is flex_attention over a block mask, compiled on CUDA (the warm-up round compiles it)
and eager on CPU, where torch runs it without gradients only: its forward + backward is not measured there.
`--bf16` runs under bf16 autocast, as training does on a GPU (where the causal pass then takes the flash kernel).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from typing import Optional

import torch
import torch.nn.functional as F

from model import Llama
from model.llama import Layout, document_layout
from pretrain import dist
from pretrain.config import load_config
from pretrain.data import get_batch, prepare_data
from pretrain.data.tokenizer import eos_id_of

VARIANTS: dict[str, tuple[Optional[str], bool]] = {
    "causal": (None, False), "dense mask": ("dense", False), "dense mask + positions": ("dense", True),
    "flex mask": ("flex", False), "flex mask + positions": ("flex", True)}
"""name: (train.document_attention kernel, or None for no document masking; RoPE positions restart per document)."""
PASSES = ("forward", "forward + backward")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=3, help="passes per variant per round")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 weights)")
    p.add_argument("overrides", nargs="*", help="config overrides (model.*, data.seq_len, train.micro_batch_size)")
    args = p.parse_args()
    cfg = load_config("configs/tiny.yaml", ["data.seq_len=256", f"run.out_dir={tempfile.mkdtemp()}",
                                            *args.overrides])
    device = dist.device()
    data = prepare_data(cfg.data, cfg.model.vocab_size)
    eos = eos_id_of(data.tokenizer_path)
    tokens = get_batch(data.train, range(cfg.train.micro_batch_size)).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    documents, positions = document_layout(inputs, eos)
    model = Llama(cfg.model).to(device)
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")  # eager on purpose

    def timed(kernel: Optional[str], restart: bool, backward: bool) -> float:
        layout = None if kernel is None else Layout(documents, positions if restart else None, kernel)
        dist.synchronize(device)
        t0 = time.perf_counter()
        with torch.set_grad_enabled(backward), torch.autocast(device.type, torch.bfloat16, enabled=args.bf16):
            logits = model(inputs, layout=layout).logits
            if backward:
                F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).backward()
        dist.synchronize(device)
        return time.perf_counter() - t0

    runs = [(name, backward) for name, (kernel, _) in VARIANTS.items() for backward in (False, True)
            if not (backward and kernel == "flex" and device.type != "cuda")]  # no flex backward off CUDA
    times: dict[tuple[str, bool], list[float]] = {run: [] for run in runs}
    for r in range(args.rounds + 1):
        for name, backward in runs if r % 2 == 0 else reversed(runs):
            for _ in range(args.steps):
                seconds = timed(*VARIANTS[name], backward)
                if r:  # round 0 warms up (and compiles flex on CUDA)
                    times[name, backward].append(seconds)
    docs = (inputs == eos).sum(dim=1).float().mean().item() + 1
    print(f"model dim {cfg.model.dim} x {cfg.model.n_layers} layers, {tuple(inputs.shape)} tokens, "
          f"{docs:.1f} documents per window on average, {device}, {'bf16' if args.bf16 else 'fp32'}, "
          f"torch {torch.__version__}")
    print("| variant | " + " | ".join(f"{p} ms (median) | vs causal" for p in PASSES) + " |")
    print("|---|" + "---:|---:|" * len(PASSES))
    for name in VARIANTS:
        cells = []
        for backward in (False, True):
            if (name, backward) not in times:
                cells += ["–", "–"]
                continue
            median = statistics.median(times[name, backward])
            cells += [f"{1e3 * median:.1f}", f"{median / statistics.median(times['causal', backward]):.2f}x"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
