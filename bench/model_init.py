#!/usr/bin/env python
"""Host memory per rank to build a model and its ZeRO-3 engine, with and without zero.Init.

Run under the deepspeed launcher (each rank reports its own peak RSS; rank 0 prints them all):

    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module bench.model_init model=1b
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module bench.model_init model=1b deepspeed.zero_init=false

With `--init-from DIR` (an HF folder) the weights are loaded after the build, as `train.init_from` does: one
tensor at a time from the safetensors (`--full-copy`: the whole fp32 state dict on every rank first, the
naive way). `--write-hf-folder DIR` writes a random bf16 HF folder of the config's model shape and exits:

    python -m bench.model_init --write-hf-folder /tmp/hf-1b model=1b
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module bench.model_init --init-from /tmp/hf-1b model=1b

Figures are peak RSS (GB) after imports, after building the model (and loading the weights) and after
`deepspeed.initialize`, plus the wall time of each; fp32, so an unpartitioned copy holds 4 bytes per parameter.
"""
from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from pathlib import Path

import torch

from model import Llama
from model.hf import save_hf_folder
from pretrain import dist
from pretrain.config import load_config
from pretrain.dist import init_distributed
from pretrain.engine import build_engine, build_model, load_weights_into
from storage.weights import load_weights


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # passed by the launcher
    p.add_argument("--init-from", type=Path, help="an HF folder to load after the build")
    p.add_argument("--full-copy", action="store_true", help="with --init-from: read the whole state dict first")
    p.add_argument("--write-hf-folder", type=Path, help="write a random bf16 HF folder of the model shape; exit")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model=1b deepspeed.zero_init=false")
    args = p.parse_args()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    cfg = load_config(args.config, ["deepspeed.zero_stage=3", "train.precision=fp32",
                                    f"run.out_dir={tempfile.mkdtemp()}", *args.overrides])
    if args.write_hf_folder:
        write_hf_folder(cfg.model, args.write_hf_folder)
        return
    init_distributed()
    rows = [("imports", peak_gb(), 0.0)]
    t0 = time.perf_counter()
    model = build_model(cfg)
    rows.append(("model built", peak_gb(), time.perf_counter() - t0))
    if args.init_from:
        t0 = time.perf_counter()
        _, state = load_weights(args.init_from, lazy=not args.full_copy)
        load_weights_into(model, state)
        del state
        rows.append((f"weights loaded ({'full copy' if args.full_copy else 'tensor by tensor'})", peak_gb(),
                     time.perf_counter() - t0))
    t0 = time.perf_counter()
    build_engine(model, cfg)
    rows.append(("engine built", peak_gb(), time.perf_counter() - t0))
    table = torch.tensor([[gb for _, gb, _ in rows]])
    gathered = [torch.zeros_like(table) for _ in range(dist.world_size())]
    torch.distributed.all_gather(gathered, table)
    if dist.is_main():
        print(f"model {cfg.model.num_params() / 1e9:.2f}B params, ZeRO-3, zero_init={cfg.deepspeed.zero_init}, "
              f"{dist.world_size()} ranks, fp32")
        print("| stage | " + " | ".join(f"peak RSS rank {r} (GB)" for r in range(len(gathered))) + " | seconds |")
        print("|---|" + "---:|" * (len(gathered) + 1))
        for i, (name, _, seconds) in enumerate(rows):
            print(f"| {name} | " + " | ".join(f"{g[0, i].item():.2f}" for g in gathered) + f" | {seconds:.1f} |")


def write_hf_folder(cfg, out: Path) -> None:
    """A random model of this shape as a bf16 HF folder (built in bf16: 2 bytes per parameter in memory)."""
    torch.set_default_dtype(torch.bfloat16)
    model = Llama(cfg)
    torch.set_default_dtype(torch.float32)
    save_hf_folder(model.state_dict(), cfg, out)
    print(f"wrote {out}: {cfg.num_params() / 1e9:.2f}B parameters, bf16")


if __name__ == "__main__":
    main()
