"""`data.streaming: true`: read a text source with `datasets` streaming, tokenize and pack it on the fly.

Nothing is cached, so a source larger than the disk trains. Each rank reads its own part of the source
(`datasets.distributed.split_dataset_by_node`: whole files, or every world-th record), drops the documents
that belong to validation (a hash of the text, as the cached pipeline does), tokenizes one document at a time
and cuts windows of seq_len + 1 tokens from what it has read. The state that continues the stream exactly is
the dataset's own position (`IterableDataset.state_dict`, taken between documents) plus the tokens read but
not yet used; it differs per rank, so it is saved per rank with the checkpoint, and a resume needs the same
number of ranks.
"""
from __future__ import annotations

import logging
from pathlib import Path

import datasets
import numpy as np
from datasets.distributed import split_dataset_by_node

from pretrain.data.config import DataConfig
from pretrain.data.errors import DataError
from pretrain.data.sources import BUILDERS, resolve_source
from pretrain.data.split import is_val_document
from pretrain.data.tokenizer import encode_batch

log = logging.getLogger(__name__)
def open_stream(cfg: DataConfig) -> datasets.IterableDataset:
    """The source as a streaming dataset of records (local files of one type, or a hub dataset)."""
    source = resolve_source(cfg)
    if source.hub:
        name, config = source.hub
        return datasets.load_dataset(name, config, split=cfg.hf_split, streaming=True)
    builders = {BUILDERS[p.suffix.lower()] for p in source.files}
    if len(builders) != 1:
        raise DataError(f"data.source={cfg.source!r}: streaming reads files of one type, got {sorted(builders)}")
    builder = builders.pop()
    kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
    return datasets.load_dataset(builder, data_files=[str(p) for p in source.files], split="train",
                                 streaming=True, **kwargs)


class DocumentStream:
    """One split's documents of a stream as token ids, in order; records that are empty are skipped."""

    def __init__(self, ds: datasets.IterableDataset, cfg: DataConfig, tokenizer: Path, seed: int, split: str):
        self.ds, self.cfg, self.tokenizer, self.split = ds, cfg, str(tokenizer), split
        self._wanted = lambda text: is_val_document(text, seed, cfg.val_fraction) == (split == "val")
        self.epoch, self._it, self._found = 0, None, False

    def next_document(self) -> list[int]:
        while True:
            if self._it is None:
                self._it = iter(self.ds)
            try:
                record = next(self._it)
            except StopIteration:  # the stream is exhausted: the next epoch reads it again from the start
                if not self._found:
                    raise DataError(f"data.source={self.cfg.source!r} holds no {self.split} document for this "
                                    "rank") from None
                self.epoch, self._it, self._found = self.epoch + 1, None, False
                self.ds.set_epoch(self.epoch)
                continue
            text = record.get(self.cfg.text_field)
            if text and text.strip() and self._wanted(text):
                self._found = True
                return encode_batch({self.cfg.text_field: [text]}, tokenizer_path=self.tokenizer,
                                    text_field=self.cfg.text_field)["ids"][0]


class TokenStream:
    """This rank's training windows, taken from its part of the stream as steps need them."""

    def __init__(self, cfg: DataConfig, tokenizer: Path, rank: int, world_size: int, seed: int):
        self.window, self.world_size = cfg.seq_len + 1, world_size
        self.ds = split_dataset_by_node(open_stream(cfg), rank=rank, world_size=world_size)
        self.docs = DocumentStream(self.ds, cfg, tokenizer, seed, "train")
        self.buffer: list[int] = []
        self.windows_read = 0

    def take(self, n: int) -> np.ndarray:
        """The next n windows [n, seq_len + 1]."""
        need = n * self.window
        while len(self.buffer) < need:
            self.buffer.extend(self.docs.next_document())
        out = np.asarray(self.buffer[:need], dtype=np.int64).reshape(n, self.window)
        del self.buffer[:need]
        self.windows_read += n
        return out

    def state_dict(self) -> dict:
        return {"dataset": self.ds.state_dict(), "epoch": self.docs.epoch, "buffer": list(self.buffer),
                "windows_read": self.windows_read, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state["world_size"] != self.world_size:
            raise DataError(f"a streamed run continues only on the same number of ranks: the checkpoint has "
                            f"{state['world_size']}, this run {self.world_size}")
        self.ds.load_state_dict(state["dataset"])
        self.docs.epoch, self.docs._it, self.docs._found = state["epoch"], None, True
        self.buffer, self.windows_read = list(state["buffer"]), state["windows_read"]


def validation_windows(cfg: DataConfig, tokenizer: Path, seed: int) -> np.ndarray:
    """The first data.stream_val_windows validation windows of the whole stream (identical on every rank)."""
    docs = DocumentStream(open_stream(cfg), cfg, tokenizer, seed, "val")
    window, n, tokens = cfg.seq_len + 1, cfg.stream_val_windows, []
    while len(tokens) < n * window and docs.epoch == 0:
        tokens.extend(docs.next_document())
    if len(tokens) < window:
        raise DataError(f"data.source={cfg.source!r} has fewer validation tokens than one window of "
                        f"{window}; raise data.val_fraction")
    usable = min(n, len(tokens) // window) * window
    return np.asarray(tokens[:usable], dtype=np.int64).reshape(-1, window)


class StreamSampler:
    """The trainer's sampler for a stream: each step takes this rank's grad_accum x micro windows from the
    stream into `staged` and hands out indices into them (the trainer gathers through StagedWindows)."""

    def __init__(self, stream: TokenStream, micro_batch_size: int, grad_accum: int):
        self.stream, self.micro, self.grad_accum = stream, micro_batch_size, grad_accum
        self.staged = np.empty((0, stream.window), dtype=np.int64)
        self.step = 0

    def next_step(self) -> list[np.ndarray]:
        self.staged = self.stream.take(self.micro * self.grad_accum)
        self.step += 1
        return [np.arange(g * self.micro, (g + 1) * self.micro) for g in range(self.grad_accum)]

    def window_key(self) -> tuple[int, int]:
        return self.step, -2

    def state_dict(self) -> dict:
        """Global part (the step); each rank's stream position is `rank_state`, saved per rank."""
        return {"step": self.step, "streaming": True}

    def rank_state(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict, rank_state: dict | None = None) -> None:
        if rank_state is None:
            raise DataError("the checkpoint holds no stream position for this rank (saved before streaming?)")
        self.step = state["step"]
        self.stream.load_state_dict(rank_state)


class StagedWindows:
    """`data.train` of a streamed run: the current step's windows, indexed as the sampler hands them out."""

    def __init__(self, sampler: StreamSampler):
        self.sampler = sampler

    def __getitem__(self, indices) -> np.ndarray:
        return self.sampler.staged[indices]
