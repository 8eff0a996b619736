"""Tokenize a text source once into growlm's token shards (pretrain/data/shards.py), in parallel and resumably.

The source's documents are cut into `num_shards` contiguous input shards (`datasets.Dataset.shard`); each is
tokenized by one worker process into `train/shard_<i>.npy` and `val/shard_<i>.npy` (a document goes to val
when a hash of its text falls below val_fraction, so the split does not depend on the sharding), written to a
temp name and renamed. A killed job keeps its finished shards and a rerun does only the rest; nodes can split
the work by shard ranges (`--shard-range 0:64` on one, `64:128` on another, same `--shards`).
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretrain.data.config import DataConfig
from pretrain.data.dataset import token_dtype
from pretrain.data.errors import DataError
from pretrain.data.shards import FORMAT, META, SHARD
from pretrain.data.sources import load_documents, resolve_source
from pretrain.data.split import is_val_document
from pretrain.data.tokenizer import encode_batch, load_tokenizer, tokenizer_fingerprint
from storage.io import check_output_folder
from storage.tokenizer_files import copy_tokenizer

log = logging.getLogger(__name__)
@dataclass(frozen=True)
class PrepareJob:
    source: str
    tokenizer: Path
    out: Path
    vocab_size: int
    num_shards: int
    shard_range: tuple[int, int]
    procs: int = 2
    text_field: str = "text"
    val_fraction: float = 0.01
    seed: int = 0
    cache_dir: str = ".cache/growlm"


def write_meta(job: PrepareJob) -> None:
    """meta.json and the tokenizer files, once; a rerun with other settings is refused rather than mixing."""
    meta = {"format": FORMAT, "num_shards": job.num_shards, "vocab_size": job.vocab_size,
            "dtype": token_dtype(job.vocab_size).name, "tokenizer_sha256": tokenizer_fingerprint(job.tokenizer),
            "source": job.source, "text_field": job.text_field, "val_fraction": job.val_fraction, "seed": job.seed}
    path = job.out / META
    if path.is_file():
        old = json.loads(path.read_text())
        changed = [f"{k}: {old.get(k)!r} -> {meta[k]!r}" for k in sorted(meta) if old.get(k) != meta[k]]
        if changed:
            raise DataError(f"{job.out} was prepared with other settings ({', '.join(changed)}); use a new --out")
        return
    for split in ("train", "val"):
        (job.out / split).mkdir(parents=True, exist_ok=True)
    copy_tokenizer(job.tokenizer, job.out)
    tmp = job.out / f".{META}.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.rename(path)


def pending(job: PrepareJob) -> list[int]:
    """Shards of this job's range not yet written (a shard is written when its train file exists)."""
    lo, hi = job.shard_range
    return [i for i in range(lo, hi) if not (job.out / "train" / SHARD.format(i)).is_file()]


def _save(path: Path, ids: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, ids)
    tmp.rename(path)


def tokenize_shard(job: PrepareJob, index: int) -> tuple[int, int, int]:
    """Write shard `index`; returns (documents, train tokens, val tokens). Val first, train last: a shard whose
    train file exists is complete."""
    cfg = DataConfig(source=job.source, text_field=job.text_field, cache_dir=job.cache_dir, num_proc=1)
    docs, _ = load_documents(cfg, resolve_source(cfg))  # datasets' Arrow cache: memory-mapped, shared
    part = docs.shard(num_shards=job.num_shards, index=index, contiguous=True)
    dtype = token_dtype(job.vocab_size)
    splits: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for batch in part.iter(batch_size=1024):
        ids = encode_batch(batch, tokenizer_path=str(job.tokenizer), text_field=job.text_field)["ids"]
        for text, doc in zip(batch[job.text_field], ids):
            split = "val" if is_val_document(text, job.seed, job.val_fraction) else "train"
            splits[split].append(np.asarray(doc, dtype=dtype))
    arrays = {s: np.concatenate(parts) if parts else np.empty(0, dtype) for s, parts in splits.items()}
    _save(job.out / "val" / SHARD.format(index), arrays["val"])
    _save(job.out / "train" / SHARD.format(index), arrays["train"])
    return len(part), len(arrays["train"]), len(arrays["val"])


def _worker(args: tuple[PrepareJob, int]) -> tuple[int, int, int]:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one tokenizer thread per process
    return tokenize_shard(*args)


def run(job: PrepareJob) -> dict[str, float]:
    """Tokenize every pending shard of the job's range with `procs` processes; returns throughput figures."""
    from tqdm import tqdm

    check_output_folder(job.out, META)  # new, empty, or a shard directory of this prepare (to resume)
    load_tokenizer(job.tokenizer, job.vocab_size)  # a bad tokenizer fails before any work
    cfg = DataConfig(source=job.source, text_field=job.text_field, cache_dir=job.cache_dir, num_proc=job.procs)
    docs, _ = load_documents(cfg, resolve_source(cfg))  # once here, so the workers hit the cache
    if len(docs) < job.num_shards:
        raise DataError(f"--shards {job.num_shards} exceeds the {len(docs)} documents of {job.source!r}")
    write_meta(job)
    todo = pending(job)
    start, totals = time.perf_counter(), np.zeros(3, dtype=np.int64)
    with multiprocessing.get_context("spawn").Pool(min(job.procs, max(1, len(todo)))) as pool, \
            tqdm(total=len(todo), desc="prepare shards", unit="shard") as bar:
        for counts in pool.imap_unordered(_worker, [(job, i) for i in todo]):
            totals += counts
            bar.update()
            bar.set_postfix(tokens_per_s=f"{totals[1:].sum() / (time.perf_counter() - start):.3g}")
    seconds = time.perf_counter() - start
    return {"shards_written": len(todo), "shards_kept": job.shard_range[1] - job.shard_range[0] - len(todo),
            "documents": int(totals[0]), "train_tokens": int(totals[1]), "val_tokens": int(totals[2]),
            "seconds": round(seconds, 2), "tokens_per_s": round(float(totals[1:].sum()) / max(seconds, 1e-9))}
