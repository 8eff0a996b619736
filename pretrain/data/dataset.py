"""prepare_data: source -> tokenizer -> tokenized documents -> train/val split -> packed windows, cached.

Packing: each split's documents (in corpus order) are encoded, each followed by EOS, concatenated into one
token stream and cut into non-overlapping windows of seq_len + 1 tokens; the stream's tail shorter than a
window is dropped. Windows are stored as .npy files (uint16 while every id fits, else uint32) and opened
memory-mapped, so every rank shares one page-cached copy.

Cache: one directory per key (source fingerprint, tokenizer file hash, seq_len, val_fraction, text_field,
seed). It is built in a private temporary directory whose manifest.json is written last, then renamed into
place in one step: a killed build or two processes racing never leave a directory that looks complete and
is not. A later call with the same key only stats the source files and memory-maps the arrays.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from pretrain.data.config import DataConfig
from pretrain.data.errors import DataError
from pretrain.data.sources import load_documents, map_procs, resolve_source
from pretrain.data.split import doc_hash, split_by_hash
from pretrain.data.tokenizer import (encode_batch, load_tokenizer, tokenizer_cache_path, tokenizer_fingerprint,
                                     train_tokenizer)
from storage.io import file_in_the_way

if TYPE_CHECKING:  # imported by builds only: a rank that memory-maps a cached build never needs it (~0.8 s)
    import datasets

log = logging.getLogger(__name__)

_PACK_VERSION = 1  # bump when the packed layout changes, so old caches are not read
_SPLITS = ("train", "val")


@dataclass
class PackedData:
    """Packed token windows for both splits, the tokenizer that made them, and what it took."""

    train: np.ndarray
    """[N_train, seq_len + 1] read-only memory map."""
    val: np.ndarray
    """[N_val, seq_len + 1] read-only memory map."""
    tokenizer_path: Path
    stats: dict
    """{train,val}_{docs,tokens,windows,bytes}, records, skipped_empty, cache_hit, build_seconds, ..."""
    mixture: list | None = None
    """With data.sources: the MixtureSource of each corpus, whose windows lie end to end in `train`."""


def prepare_data(cfg: DataConfig, vocab_size: int, seed: int = 0) -> PackedData:
    """Return the packed train/val windows for `cfg`, building and caching them on first use.

    `seed` salts the hash that assigns documents to train or val (the tokenizer does not depend on it);
    pass the same data seed to runs whose val losses are to be compared.
    """
    start = time.perf_counter()
    cfg = _as_config(cfg)
    if (blocker := file_in_the_way(cfg.cache_dir)) is not None:
        raise DataError(f"data.cache_dir={cfg.cache_dir}: {blocker} is a file; give a folder for the caches")
    if cfg.streaming:  # validation windows only: training windows are read as steps need them
        from pretrain.data.streaming import validation_windows

        tok_path = Path(cfg.tokenizer).resolve()
        load_tokenizer(tok_path, vocab_size)
        val = validation_windows(cfg, tok_path, seed)
        return PackedData(train=None, val=val, tokenizer_path=tok_path,
                          stats={"streaming": True, "val_windows": len(val),
                                 "load_seconds": round(time.perf_counter() - start, 4)})
    if cfg.tokenizer:  # a given tokenizer is checked before anything is written (the embedded corpus, caches)
        tok_path = Path(cfg.tokenizer).resolve()
        load_tokenizer(tok_path, vocab_size)
    source = resolve_source(cfg)
    fingerprint = source.fingerprint(cfg)
    if not cfg.tokenizer:
        tok_path = tokenizer_cache_path(cfg.cache_dir, fingerprint, vocab_size, cfg.tokenizer_type,
                                        cfg.tokenizer_sample_bytes).resolve()
    if tok_path.exists():  # a .model file, or an HF tokenizer's folder or tokenizer.json
        cached = _load(_key_dir(cfg, fingerprint, tok_path, vocab_size, seed), tok_path, start)
        if cached:
            return cached
    docs, counts = load_documents(cfg, source)
    if not cfg.tokenizer and not tok_path.is_file():  # only growlm's own cached tokenizer is ever trained
        train_tokenizer(_tokenizer_sample(docs, cfg), tok_path, vocab_size, cfg.tokenizer_type)
        load_tokenizer(tok_path, vocab_size)
    key_dir = _key_dir(cfg, fingerprint, tok_path, vocab_size, seed)
    return _load(key_dir, tok_path, start) or _build(cfg, docs, counts, tok_path, vocab_size, seed, key_dir, start)


def _as_config(cfg) -> DataConfig:
    """Accept the dataclass or an omegaconf node of it (whose merges skip __post_init__), validated."""
    if not isinstance(cfg, DataConfig):
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_object(cfg) if OmegaConf.is_config(cfg) else DataConfig(**cfg)
    cfg.validate()
    return cfg


def _key_dir(cfg: DataConfig, fingerprint: str, tok_path: Path, vocab_size: int, seed: int) -> Path:
    tok_hash = tokenizer_fingerprint(tok_path)
    parts = [fingerprint, tok_hash, cfg.seq_len, cfg.val_fraction, cfg.text_field, seed, token_dtype(vocab_size).str,
             _PACK_VERSION]
    return Path(cfg.cache_dir) / "packed" / hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of the vocabulary (packed windows and token shards)."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _load(key_dir: Path, tok_path: Path, start: float, hit: bool = True) -> PackedData | None:
    """Memory-map a complete cache directory (one with a manifest), or None if there is none. A damaged one
    (a truncated array, a garbled manifest: a disk that filled up, a copy cut short) is removed with a warning
    naming what is wrong, so the caller rebuilds it; right after a build, damage is an error."""
    manifest = key_dir / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        stats, arrays = _open_cache(key_dir)
    except DataError as err:
        if not hit:
            raise
        log.warning("data: %s; removing the damaged cache and building it again", err)
        doomed = key_dir.with_name(f".damaged-{key_dir.name}-{uuid.uuid4().hex[:8]}")
        os.rename(key_dir, doomed)  # at once: a racing rank sees no cache rather than a half-deleted one
        shutil.rmtree(doomed, ignore_errors=True)
        return None
    stats.update(cache_hit=hit, load_seconds=round(time.perf_counter() - start, 4), cache_dir=str(key_dir))
    if hit:
        log.info("data: cache hit %s (%d train / %d val windows)", key_dir, len(arrays["train"]), len(arrays["val"]))
    return PackedData(train=arrays["train"], val=arrays["val"], tokenizer_path=tok_path, stats=stats)


def _open_cache(key_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(manifest, memory-mapped windows) of a cache directory, checked against each other."""
    try:
        stats = json.loads((key_dir / "manifest.json").read_text())
        arrays = {s: np.load(key_dir / f"{s}.npy", mmap_mode="r") for s in _SPLITS}
    except (OSError, ValueError, EOFError) as err:  # JSONDecodeError is a ValueError, as numpy's are
        raise DataError(f"cache {key_dir} is damaged ({type(err).__name__}: {err})") from None
    for split, array in arrays.items():
        expected = (stats.get(f"{split}_windows"), stats.get("seq_len", -2) + 1)
        if array.shape != expected:
            raise DataError(f"cache {key_dir / f'{split}.npy'} holds windows {array.shape}, its manifest says "
                            f"{expected}")
    return stats, arrays


def _tokenizer_sample(docs: datasets.Dataset, cfg: DataConfig) -> Iterator[str]:
    """Documents in a fixed pseudo-random order up to tokenizer_sample_bytes (the last one cut to fit)."""
    order = np.random.default_rng(0).permutation(len(docs))
    left = cfg.tokenizer_sample_bytes
    for begin in range(0, len(order), 1024):
        for text in docs[order[begin:begin + 1024].tolist()][cfg.text_field]:
            data = text.encode("utf-8")
            yield data[:left].decode("utf-8", errors="ignore")
            left -= len(data)
            if left <= 0:
                return


def _encode(batch: dict, *, tokenizer_path: str, text_field: str, seed: int) -> dict:
    out = encode_batch(batch, tokenizer_path=tokenizer_path, text_field=text_field)
    out["num_bytes"] = [len(t.encode("utf-8")) for t in batch[text_field]]
    out["doc_hash"] = [doc_hash(t, seed) for t in batch[text_field]]
    return out


def _build(cfg: DataConfig, docs: datasets.Dataset, counts: dict, tok_path: Path, vocab_size: int, seed: int,
           key_dir: Path, start: float) -> PackedData:
    import datasets

    features = datasets.Features({"ids": datasets.List(datasets.Value("int32")), "num_tokens": datasets.Value("int64"),
                                  "num_bytes": datasets.Value("int64"), "doc_hash": datasets.Value("int64")})
    tokenized = docs.map(
        _encode, batched=True, num_proc=map_procs(cfg, docs), remove_columns=docs.column_names, features=features,
        fn_kwargs={"tokenizer_path": str(tok_path), "text_field": cfg.text_field, "seed": seed}, desc="tokenize",
    )
    window = cfg.seq_len + 1
    # whole columns through arrow: the datasets "numpy" format converts row by row (minutes per million docs)
    columns = tokenized.with_format("arrow")[:]
    tokens, nbytes = (columns[c].to_numpy() for c in ("num_tokens", "num_bytes"))
    split = split_by_hash(columns["doc_hash"].to_numpy(), cfg.val_fraction)
    stats: dict = {"source": cfg.source, "tokenizer": str(tok_path), "vocab_size": vocab_size,
                   "seq_len": cfg.seq_len, "dtype": token_dtype(vocab_size).name, **counts}
    for name, idx in split.items():
        n_tokens = int(tokens[idx].sum())
        stats.update({f"{name}_docs": len(idx), f"{name}_tokens": n_tokens, f"{name}_windows": n_tokens // window,
                      f"{name}_bytes": int(nbytes[idx].sum())})
        if n_tokens < window:
            raise DataError(
                f"corpus too small: the {name} split has {len(idx)} documents and {n_tokens} tokens, but one "
                f"window needs data.seq_len + 1 = {window}; add text, lower data.seq_len or change data.val_fraction"
            )
    tmp = Path(cfg.cache_dir) / "packed" / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        for name, idx in split.items():
            _write_windows(tokenized.select(idx), tmp / f"{name}.npy", stats[f"{name}_windows"], window,
                           token_dtype(vocab_size))
        stats["build_seconds"] = round(time.perf_counter() - start, 3)
        (tmp / "manifest.json").write_text(json.dumps(stats, indent=1))
        try:
            os.rename(tmp, key_dir)
        except OSError:  # another process finished the same key first; its result is identical
            if not (key_dir / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("data: built %s in %.1fs: %s", key_dir, stats["build_seconds"], stats)
    return _load(key_dir, tok_path, start, hit=False)


def _write_windows(ds: datasets.Dataset, path: Path, n_windows: int, window: int, dtype: np.dtype) -> None:
    """Stream the split's concatenated ids into an .npy memory map, batch by batch, dropping the tail."""
    import pyarrow.compute as pc

    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n_windows, window))
    flat = out.reshape(-1)
    pos = 0
    for table in ds.with_format("arrow").iter(batch_size=4096):
        ids = pc.list_flatten(table.column("ids")).to_numpy()
        take = min(len(ids), len(flat) - pos)
        flat[pos:pos + take] = ids[:take]
        pos += take
        if pos == len(flat):
            break
    out.flush()
