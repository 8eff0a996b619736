#!/usr/bin/env python
"""Start-up time and memory of a run over a huge pre-tokenized corpus, simulated with sparse shard files.

    python -m bench.data_scale --tokens 1e10 --shards 1000 --out /tmp/synthetic

Writes a growlm shard directory whose shards are sparse files (their .npy headers are real, their tokens
read as zeros and take no disk), then measures in this process what every rank does at start-up: open the
corpus (meta.json, one header per shard), build the mixture's index and sampler, and draw and gather batches.
Reports seconds and peak RSS after each stage, and the sampler's and gather's cost per global batch.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from pretrain.data import DataConfig, prepare_data
from pretrain.data.config import SourceSpec
from pretrain.data.corpora import prepare_mixture
from pretrain.data.mixture import MixtureSampler
from pretrain.data.shards import FORMAT, META, SHARD
from pretrain.data.tokenizer import tokenizer_fingerprint
from storage.tokenizer_files import copy_tokenizer

VOCAB = 512


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_sparse_corpus(out: Path, tokens: int, shards: int, tokenizer: Path) -> None:
    """`shards` uint16 shards of tokens/shards tokens each, allocated sparsely (header + truncate)."""
    per_shard = tokens // shards
    for split, n in (("train", per_shard), ("val", max(per_shard // 100, 1024))):
        (out / split).mkdir(parents=True, exist_ok=True)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint16)), "fortran_order": False, "shape": (n,)}
        for i in range(shards):
            with open(out / split / SHARD.format(i), "wb") as fh:
                np.lib.format.write_array_header_1_0(fh, header)
                fh.truncate(fh.tell() + 2 * n)
    copy_tokenizer(tokenizer, out)
    (out / META).write_text(json.dumps({"format": FORMAT, "num_shards": shards, "vocab_size": VOCAB,
                                        "dtype": "uint16", "tokenizer_sha256": tokenizer_fingerprint(tokenizer)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=float, default=1e10)
    p.add_argument("--shards", type=int, default=1000)
    p.add_argument("--out", type=Path, default=Path("/tmp/growlm-synthetic"))
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--global-batch", type=int, default=512, help="windows per optimizer step (all ranks)")
    p.add_argument("--steps", type=int, default=50, help="steps drawn to time the sampler and the gather")
    args = p.parse_args()
    tokenizer = prepare_data(DataConfig(embedded_max_bytes=300_000, num_proc=1), VOCAB).tokenizer_path
    if not (args.out / META).is_file():
        t0 = time.perf_counter()
        write_sparse_corpus(args.out, int(args.tokens), args.shards, tokenizer)
        print(f"wrote {args.shards} sparse shards ({args.tokens:.3g} tokens) in {time.perf_counter() - t0:.1f} s")
    rows = [("imports + tokenizer", 0.0, peak_mb())]
    t0 = time.perf_counter()
    data = prepare_mixture(DataConfig(sources=[SourceSpec(path=str(args.out))], seq_len=args.seq_len), VOCAB)
    rows.append(("corpus opened, windows indexed", time.perf_counter() - t0, peak_mb()))
    t0 = time.perf_counter()
    sampler = MixtureSampler(data.mixture, args.global_batch, 1, 1, 0, seed=0)
    batch = sampler.next_step()[0]
    rows.append(("sampler built, first batch drawn", time.perf_counter() - t0, peak_mb()))
    t0 = time.perf_counter()
    data.train[batch]
    rows.append(("first batch gathered", time.perf_counter() - t0, peak_mb()))
    draw = gather = 0.0
    for _ in range(args.steps):
        t0 = time.perf_counter()
        batch = sampler.next_step()[0]
        draw += time.perf_counter() - t0
        t0 = time.perf_counter()
        data.train[batch]
        gather += time.perf_counter() - t0
    rows.append((f"{args.steps} more steps", draw + gather, peak_mb()))
    print(f"{len(data.train):,} training windows of {args.seq_len + 1} tokens in {args.shards} shards "
          f"({args.tokens:.3g} tokens); global batch {args.global_batch}")
    print("| stage | seconds | peak RSS (MB) |\n|---|---:|---:|")
    for name, seconds, mb in rows:
        print(f"| {name} | {seconds:.3f} | {mb:.0f} |")
    print(f"per step: sampler {1e3 * draw / args.steps:.2f} ms, gather {1e3 * gather / args.steps:.2f} ms "
          f"({args.global_batch} windows)")


if __name__ == "__main__":
    main()
