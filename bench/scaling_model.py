#!/usr/bin/env python
"""Scaling on paper: expected tokens/s on 8 and 2x8 GPUs per ZeRO stage, from one measured single-GPU rate.

A model, not a measurement. Per optimizer step each GPU computes its share at the measured single-GPU rate
(MFU held constant) and moves the ZeRO communication volumes of the ZeRO paper (Rajbhandari et al. 2020, §7),
in bf16 (2 bytes per element), over ring collectives, each GPU sending (N-1)/N of the message per collective:
  ZeRO-1   all-reduce of the gradients (reduce-scatter + all-gather, 2 Psi) once per optimizer step
  ZeRO-2   reduce-scatter of the gradients on every micro-batch (Psi), all-gather of the updated
           parameters once per step (Psi)
  ZeRO-3   all-gather of the parameters in forward and again in backward, reduce-scatter of the gradients,
           on every micro-batch (3 Psi)
Bandwidth per GPU: inside a node NVLink (--nvlink-gbs, one direction); across nodes each GPU gets its
share of the node's network (--gpus-per-node share of 400 Gb/s or 3.2 Tb/s), which is what the slowest hop of
a ring spanning nodes runs at. Step time is printed as a range: communication fully hidden behind compute
(max) and not at all (sum); DeepSpeed overlaps ZeRO-1/2 gradient reduction with backward, ZeRO-3's
prefetched gathers only partly. Model-state memory per GPU (bf16 params and grads, fp32 master + Adam:
16 bytes/param unsharded) says when ZeRO-3 is needed at all.

    python -m bench.scaling_model                                   # 1b preset, the H100 rate measured
    python -m bench.scaling_model --model 7b --tokens-per-s 9000 --micro-batch 1 --grad-accum 32
"""
from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import OmegaConf

from model.config import ModelConfig

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "model"
NETWORKS_GBITS = {"400 Gb/s": 400.0, "3.2 Tb/s": 3200.0}


def comm_bytes_per_gpu(stage: int, params: int, gpus: int, grad_accum: int, elem_bytes: int = 2) -> float:
    """Bytes each GPU sends per optimizer step under ring collectives."""
    if gpus == 1:
        return 0.0
    share = (gpus - 1) / gpus * params * elem_bytes  # one collective over the full parameter set
    if stage in (0, 1):
        return 2 * share
    if stage == 2:
        return share * grad_accum + share
    if stage == 3:
        return 3 * share * grad_accum
    raise ValueError(f"ZeRO stage {stage} is not one of 0-3")


def model_state_gb(stage: int, params: int, gpus: int) -> float:
    """bf16 params (2) + bf16 grads (2) + fp32 master, exp_avg, exp_avg_sq (12) bytes per parameter, sharded as
    each stage shards them."""
    p, g, o = 2 * params, 2 * params, 12 * params
    sharded = {0: p + g + o, 1: p + g + o / gpus, 2: p + (g + o) / gpus, 3: (p + g + o) / gpus}[stage]
    return sharded / 1e9


def per_gpu_bandwidth(gpus: int, gpus_per_node: int, nvlink_gbs: float, network_gbits: float) -> float:
    """Bytes/s one GPU sends in a ring: NVLink within a node, its share of the node's network across nodes."""
    if gpus <= gpus_per_node:
        return nvlink_gbs * 1e9
    return min(nvlink_gbs * 1e9, network_gbits / 8 * 1e9 / gpus_per_node)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="1b", help="a preset of configs/model/")
    p.add_argument("--tokens-per-s", type=float, default=63_900.0,
                   help="measured single-GPU tokens/s (default: 1b, ZeRO-1, compiled, one H100, bench/gpu.sh)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=16)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--nvlink-gbs", type=float, default=450.0, help="NVLink GB/s per GPU per direction (H100/H200 SXM)")
    args = p.parse_args()
    cfg = ModelConfig(**OmegaConf.to_container(OmegaConf.load(PRESETS / f"{args.model}.yaml")))
    params = cfg.num_params()
    tokens_per_gpu_step = args.micro_batch * args.grad_accum * args.seq_len
    compute_s = tokens_per_gpu_step / args.tokens_per_s
    print(f"model {args.model}: {params / 1e9:.2f}B params; {tokens_per_gpu_step:,} tokens per GPU per step "
          f"(micro {args.micro_batch} x accum {args.grad_accum} x seq {args.seq_len}); compute {compute_s:.2f} s "
          f"per step at {args.tokens_per_s:,.0f} tokens/s per GPU")
    print("| GPUs | network | ZeRO | comm GB/GPU/step | comm s | tokens/s (hidden .. exposed) | "
          "scaling eff. (exposed) | model states GB/GPU |")
    print("|---:|---|---:|---:|---:|---|---:|---:|")
    for gpus in (8, 2 * args.gpus_per_node):
        for net, gbits in NETWORKS_GBITS.items():
            if gpus <= args.gpus_per_node and net != next(iter(NETWORKS_GBITS)):
                continue  # one node: NVLink only, the network does not matter
            bw = per_gpu_bandwidth(gpus, args.gpus_per_node, args.nvlink_gbs, gbits)
            for stage in (1, 2, 3):
                volume = comm_bytes_per_gpu(stage, params, gpus, args.grad_accum)
                comm_s = volume / bw
                best = gpus * tokens_per_gpu_step / max(compute_s, comm_s)
                worst = gpus * tokens_per_gpu_step / (compute_s + comm_s)
                ideal = gpus * args.tokens_per_s
                print(f"| {gpus} | {'NVLink' if gpus <= args.gpus_per_node else net} | {stage} | {volume / 1e9:.1f} | "
                      f"{comm_s:.2f} | {worst:,.0f} .. {best:,.0f} | {worst / ideal:.0%} | "
                      f"{model_state_gb(stage, params, gpus):.1f} |")


if __name__ == "__main__":
    main()
