"""`data.sources`: open pre-tokenized corpora, check them against the model and tokenizer, lay their windows
end to end (the index space MixtureSampler draws from) and pick validation windows from every source."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pretrain.data.config import DataConfig
from pretrain.data.dataset import PackedData
from pretrain.data.errors import DataError
from pretrain.data.mixture import MixtureSource
from pretrain.data.shards import Windows, check_ids, open_corpus
from pretrain.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from storage.tokenizer_files import find_tokenizer


class Concat:
    """Several window sets as one index space: part after part, or (interleave) one window of each in turn
    up to the shortest part's length, so the first windows of a validation set come from every source."""

    def __init__(self, parts: list[Windows], interleave: bool = False):
        self.parts, self.interleave = parts, interleave
        self.window = parts[0].window
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.parts) * min(len(p) for p in self.parts) if self.interleave else int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.window

    def __getitem__(self, indices) -> np.ndarray:
        idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        if self.interleave:
            part, local = idx % len(self.parts), idx // len(self.parts)
        else:
            part = np.searchsorted(self.starts, idx, side="right") - 1
            local = idx - self.starts[part]
        out = np.empty((len(idx), self.window), dtype=np.int64)
        for p in np.unique(part):
            rows = np.flatnonzero(part == p)
            out[rows] = self.parts[p][local[rows]]
        return out if np.ndim(indices) else out[0]


def mixture_tokenizer(cfg: DataConfig) -> Path:
    """data.tokenizer, or else the first growlm shard directory's own (external formats name none)."""
    if cfg.tokenizer:
        return Path(cfg.tokenizer).resolve()
    for spec in cfg.sources:
        own = find_tokenizer(spec.path) if Path(spec.path).is_dir() else None
        if own is not None:
            return own.resolve()
    raise DataError("data.sources name no growlm shard directory carrying its tokenizer: set data.tokenizer to "
                    "the tokenizer the ids come from")


def prepare_mixture(cfg: DataConfig, vocab_size: int) -> PackedData:
    """Open every source (memory maps and per-file counts only) and check it; nothing is tokenized here."""
    start = time.perf_counter()
    corpora = [open_corpus(spec.path, spec.format, spec.val_fraction) for spec in cfg.sources]  # each named
    tok_path = mixture_tokenizer(cfg)
    load_tokenizer(tok_path, vocab_size)
    fingerprint, window = tokenizer_fingerprint(tok_path), cfg.seq_len + 1
    train, val, sources = [], [], []
    for spec, corpus in zip(cfg.sources, corpora):
        if corpus.tokenizer is not None and corpus.tokenizer != fingerprint:
            raise DataError(f"data.sources {spec.path!r} was prepared with another tokenizer than {tok_path}")
        check_ids(corpus, vocab_size)
        t, v = corpus.windows(window)
        if len(v) == 0:
            raise DataError(f"data.sources {spec.path!r} has no validation window of data.seq_len + 1 = {window} "
                            "tokens")
        train.append(t)
        val.append(v)
        sources.append(MixtureSource(spec.label, len(t), float(spec.weight)))
    labels = [s.name for s in sources]
    if len(set(labels)) != len(labels):
        raise DataError(f"data.sources labels {labels} repeat; give each a distinct `name`")
    stats = {"sources": {s.name: {"train_windows": s.windows, "weight": s.weight} for s in sources},
             "train_windows": sum(len(t) for t in train), "val_windows": sum(len(v) for v in val),
             "load_seconds": round(time.perf_counter() - start, 4), "seq_len": cfg.seq_len}
    return PackedData(train=Concat(train), val=Concat(val, interleave=True), tokenizer_path=tok_path, stats=stats,
                      mixture=sources)
