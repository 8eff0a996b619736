#!/usr/bin/env python
"""Memory and time of the LM loss: plain (logits, then cross-entropy) vs the fused chunked head (model/loss.py).

Memory: each variant runs forward + backward in a fresh process; the figure is the growth of its peak RSS over
the inputs already allocated, i.e. what the loss itself needs (CPU; on a GPU, peak allocated memory). Time:
the variants alternate in one process over interleaved rounds (medians), so machine noise lands on each alike.

    OMP_NUM_THREADS=2 python -m bench.loss                          # vocab 32k, seq 2048, dim 2048
    python -m bench.loss --tokens 8192 --chunks 512,1024,4096
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from model.loss import chunked_linear_cross_entropy
from pretrain import dist


def inputs(tokens: int, dim: int, vocab: int, device: torch.device):
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(tokens, dim, generator=g, device=device, requires_grad=True)
    weight = (0.02 * torch.randn(vocab, dim, generator=g, device=device)).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=g, device=device)
    return hidden, weight, targets


def loss_step(chunk: int, z_loss: bool, hidden, weight, targets) -> None:
    """Forward + backward of mean cross-entropy (plus a z-loss term), as the trainer computes them."""
    if chunk == 0:
        logits = (hidden @ weight.T).float()
        loss = F.cross_entropy(logits, targets)
        log_z = torch.logsumexp(logits, -1) if z_loss else None
    else:
        losses, log_z = chunked_linear_cross_entropy(hidden, weight, targets, chunk, log_z_grad=z_loss)
        loss = losses.mean()
    if z_loss:
        loss = loss + 1e-4 * log_z.square().mean()
    loss.backward()
    hidden.grad = weight.grad = None


def peak_gb(chunk: int, z_loss: bool, tokens: int, dim: int, vocab: int, queue) -> None:
    device = dist.device()
    tensors = inputs(tokens, dim, vocab, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated()
        loss_step(chunk, z_loss, *tensors)
        queue.put((torch.cuda.max_memory_allocated() - base) / 2**30)
        return
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss_step(chunk, z_loss, *tensors)
    queue.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20)  # KiB -> GiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048, help="tokens per micro-batch (micro-batch x seq_len)")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--chunks", default="256,1024", help="chunk sizes to compare against the plain path (0)")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    chunks = [0] + [int(c) for c in args.chunks.split(",")]
    variants = [(c, z) for z in (False, True) for c in chunks]
    ctx = mp.get_context("spawn")
    memory = {}
    for variant in variants:
        queue = ctx.Queue()
        proc = ctx.Process(target=peak_gb, args=(*variant, args.tokens, args.dim, args.vocab, queue))
        proc.start()
        memory[variant] = queue.get()
        proc.join()
    device = dist.device()
    tensors = inputs(args.tokens, args.dim, args.vocab, device)
    times: dict[tuple[int, bool], list[float]] = {v: [] for v in variants}
    for r in range(args.rounds + 1):
        for variant in variants if r % 2 == 0 else variants[::-1]:
            dist.synchronize(device)
            t0 = time.perf_counter()
            loss_step(*variant, *tensors)
            dist.synchronize(device)
            if r > 0:  # round 0 warms up
                times[variant].append(time.perf_counter() - t0)
    print(f"tokens={args.tokens} dim={args.dim} vocab={args.vocab} fp32 device={device} "
          f"threads={torch.get_num_threads()} torch={torch.__version__}")
    print("| loss | z-loss | peak GB | memory cut vs plain | ms | time vs plain |\n|---|---|---:|---:|---:|---:|")
    for chunk, z in variants:
        t, plain_t = statistics.median(times[chunk, z]), statistics.median(times[0, z])
        name = "plain" if chunk == 0 else f"chunk {chunk}"
        print(f"| {name} | {'yes' if z else 'no'} | {memory[chunk, z]:.3f} | "
              f"{memory[0, z] / max(memory[chunk, z], 1e-9):.1f}x | {t * 1e3:.0f} | {t / plain_t:.3f}x |")


if __name__ == "__main__":
    main()
