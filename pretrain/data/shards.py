"""Token corpora on disk, read through memory maps: growlm's prepared shards and Megatron/gpt-neox `.bin/.idx`.

A corpus is a list of 1-D token files; training windows of `seq_len + 1` tokens are cut from each file in
order (a file's tail shorter than a window is dropped), so the index is one cumulative count per file, O(#files),
and nothing is read until a window is (one pread per window): a corpus of 10^10 tokens opens in milliseconds,
with memory that does not grow with the corpus or with the batches read.

growlm's layout (written by `python -m pretrain.data prepare`):
    <dir>/meta.json                     tokenizer fingerprint, vocab size, dtype, planned shard count
    <dir>/tokenizer.* / tokenizer.model the tokenizer the ids come from
    <dir>/train/shard_<i>.npy           1-D token ids: documents, each ended by its EOS, in input order
    <dir>/val/shard_<i>.npy             documents held out by a hash of their text
Megatron / gpt-neox: `<prefix>.bin` (raw tokens) + `<prefix>.idx` (MMIDIDX header naming the dtype); with no
separate validation data, the last `val_fraction` of each file's windows is held out.
"""
from __future__ import annotations

import glob
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretrain.data.errors import DataError

META = "meta.json"
SHARD = "shard_{:05d}.npy"
FORMAT = "growlm-shards-v1"
MAX_OPEN = 256
_MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
_MEGATRON_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
                    8: np.uint16}


@dataclass(frozen=True)
class TokenFile:
    """One memory-mappable run of token ids (an .npy array, or a raw .bin from `offset` on)."""

    path: Path
    dtype: np.dtype
    tokens: int
    offset: int = 0  # bytes before the first token (an .npy header)

    def open(self) -> np.ndarray:
        """The whole file as a read-only memory map (for scans; batches are read with `read`)."""
        if self.tokens == 0:  # mmap refuses empty files
            return np.empty(0, dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=(self.tokens,))

    def read(self, fd: int, start: int, count: int) -> np.ndarray:
        """`count` tokens from token `start`: one pread of exactly those bytes. Random windows through a memory
        map would fault in the kernel's readahead around each and grow the resident set with every batch."""
        nbytes = count * self.dtype.itemsize
        return np.frombuffer(os.pread(fd, nbytes, self.offset + start * self.dtype.itemsize), dtype=self.dtype)


class Windows:
    """Windows of `window` tokens over token files, addressed by a global index; `windows[idx]` gathers rows
    into a [len(idx), window] array. Only the files a batch touches are opened."""

    def __init__(self, files: list[TokenFile], window: int, keep: tuple[float, float] = (0.0, 1.0)):
        """`keep`: the fraction range of each file's windows to expose ((0, 0.99) for train, (0.99, 1) for val)."""
        self.files, self.window = files, window
        self.first, counts = [], []  # first window of each file, windows per file
        for f in files:
            n = f.tokens // window
            lo, hi = int(n * keep[0]), int(n * keep[1])
            self.first.append(lo)
            counts.append(hi - lo)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.window

    def _fd(self, i: int) -> int:
        """An open descriptor of file i; at most MAX_OPEN stay open (the oldest is closed), so thousands of
        shards never meet the process's file limit."""
        if i not in self._fds:
            if len(self._fds) >= MAX_OPEN:
                os.close(self._fds.pop(next(iter(self._fds))))
            self._fds[i] = os.open(self.files[i].path, os.O_RDONLY)
        return self._fds[i]

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)

    def __getitem__(self, indices) -> np.ndarray:
        idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"window index out of range [0, {len(self)})")
        files = np.searchsorted(self.starts, idx, side="right") - 1
        out = np.empty((len(idx), self.window), dtype=self.files[0].dtype if self.files else np.int64)
        for row, (f, i) in enumerate(zip(files, idx)):
            start = (self.first[f] + i - self.starts[f]) * self.window
            out[row] = self.files[f].read(self._fd(int(f)), int(start), self.window)
        return out if np.ndim(indices) else out[0]


def npy_file(path: Path) -> TokenFile:
    """An .npy token array, its header read without mapping the data."""
    with open(path, "rb") as fh:
        major, _ = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh)
        offset = fh.tell()
    if len(shape) != 1:
        raise DataError(f"{path} holds an array of shape {shape}; token shards are 1-D")
    return TokenFile(path, np.dtype(dtype), int(shape[0]), offset)


def megatron_file(prefix: Path) -> TokenFile:
    """`<prefix>.bin` with the dtype its `.idx` header names (Megatron-LM / gpt-neox MMIDIDX format)."""
    idx, bin_ = prefix.with_suffix(".idx"), prefix.with_suffix(".bin")
    if not idx.is_file() or not bin_.is_file():
        raise DataError(f"Megatron data {prefix}: needs both {bin_.name} and {idx.name}")
    with open(idx, "rb") as fh:
        header = fh.read(len(_MEGATRON_MAGIC) + 9)
    if header[:len(_MEGATRON_MAGIC)] != _MEGATRON_MAGIC:
        raise DataError(f"{idx} is not a Megatron MMIDIDX index (bad magic bytes)")
    version, code = struct.unpack("<QB", header[len(_MEGATRON_MAGIC):])
    if version != 1 or code not in _MEGATRON_DTYPES:
        raise DataError(f"{idx}: unsupported MMIDIDX version {version} or dtype code {code}")
    dtype = np.dtype(_MEGATRON_DTYPES[code])
    if dtype.kind not in "ui":
        raise DataError(f"{idx} names dtype {dtype}, not integer token ids")
    return TokenFile(bin_, dtype, bin_.stat().st_size // dtype.itemsize)


@dataclass(frozen=True)
class Corpus:
    """A token source: its train and val files, how to cut them, and what it claims about its ids."""

    path: str
    train: list[TokenFile]
    val: list[TokenFile]
    val_fraction: float = 0.0  # > 0: val is the tail of each train file (no separate val files)
    vocab_size: int | None = None
    tokenizer: str | None = None  # fingerprint (growlm shards)

    def windows(self, window: int) -> tuple[Windows, Windows]:
        if self.val_fraction:
            return (Windows(self.train, window, (0.0, 1.0 - self.val_fraction)),
                    Windows(self.train, window, (1.0 - self.val_fraction, 1.0)))
        return Windows(self.train, window), Windows(self.val, window)


RAW_TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet", ".gz")
"""Files data.source reads as documents; as a mixture source they must be tokenized first."""


def open_corpus(path: str, fmt: str = "auto", val_fraction: float = 0.01) -> Corpus:
    """A growlm shard directory (with meta.json), or Megatron `.bin/.idx` prefixes (a prefix, or a glob of .bin
    files); the format is refused by name when it is neither."""
    p = Path(path)
    if fmt in ("auto", "growlm") and (p / META).is_file():
        return _growlm_corpus(p)
    if fmt in ("auto", "megatron"):
        bins = sorted(glob.glob(path if path.endswith(".bin") or "*" in path else path + ".bin"))
        if bins:
            files = [megatron_file(Path(b).with_suffix("")) for b in bins]
            return Corpus(path, files, [], val_fraction=val_fraction)
    if p.is_file() and p.suffix in RAW_TEXT_SUFFIXES:
        raise DataError(f"data source {path!r} is raw text: tokenize it once with `python -m pretrain.data prepare "
                        f"{path} --out DIR --tokenizer TOKENIZER` and list DIR, or train on it alone with "
                        "data.source")
    if not p.exists() and not glob.glob(path + "*"):
        raise DataError(f"data source {path!r} does not exist")
    raise DataError(f"data source {path!r} (format {fmt}) is neither a growlm shard directory (with {META}, from "
                    "`python -m pretrain.data prepare`) nor Megatron/gpt-neox data (<prefix>.bin + <prefix>.idx)")


def _growlm_corpus(folder: Path) -> Corpus:
    meta = json.loads((folder / META).read_text())
    if meta.get("format") != FORMAT:
        raise DataError(f"{folder / META}: format {meta.get('format')!r}, expected {FORMAT!r}")
    missing = [i for i in range(meta["num_shards"]) if not (folder / "train" / SHARD.format(i)).is_file()]
    if missing:
        raise DataError(f"{folder} is incomplete: shards {missing[:10]}{' ...' if len(missing) > 10 else ''} of "
                        f"{meta['num_shards']} were never written; run `python -m pretrain.data prepare` again "
                        "(finished shards are kept)")
    files = {split: [npy_file(folder / split / SHARD.format(i)) for i in range(meta["num_shards"])]
             for split in ("train", "val")}
    wrong = [f.path for split in files.values() for f in split if f.dtype != np.dtype(meta["dtype"])]
    if wrong:
        raise DataError(f"{wrong[0]} holds {npy_file(wrong[0]).dtype} token ids, but {folder / META} says "
                        f"{meta['dtype']}: not written by this prepare run")
    return Corpus(str(folder), files["train"], files["val"], vocab_size=meta["vocab_size"],
                  tokenizer=meta["tokenizer_sha256"])


def check_ids(corpus: Corpus, vocab_size: int, sample_tokens: int = 1 << 20) -> None:
    """Refuse a corpus whose ids cannot index the model's embedding: by the vocabulary it was prepared with, or
    (external formats, which record none) by the largest id in its first `sample_tokens` tokens."""
    if corpus.vocab_size is not None and corpus.vocab_size != vocab_size:
        raise DataError(f"data source {corpus.path} was prepared with vocab size {corpus.vocab_size}, but "
                        f"model.vocab_size={vocab_size}")
    if corpus.train and corpus.vocab_size is None:
        head = corpus.train[0].open()[:sample_tokens]
        if len(head) and int(head.max()) >= vocab_size:
            raise DataError(f"data source {corpus.path} holds token id {int(head.max())} >= model.vocab_size="
                            f"{vocab_size} (dtype {corpus.train[0].dtype}): another tokenizer's data?")
