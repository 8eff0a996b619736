"""The `data` section of a run config: one typed dataclass, validated on construction."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pretrain.data.errors import DataError

TOKENIZER_TYPES = ("bpe", "unigram")


@dataclass
class DataConfig:
    """Where the text comes from, how it is tokenized, and how it is cut into training windows."""

    source: str = "embedded"
    """`embedded` (text every Python install carries, no download), a local path or glob of
    .txt/.jsonl/.json/.parquet files (comma-separated list allowed), or `hf:<dataset>[:<config>]` for a hub
    dataset where the network allows."""
    text_field: str = "text"
    """Field of each record that holds the document text (.txt files always give `text`)."""
    hf_split: str = "train"
    """Split of a hub dataset to read (only for `hf:` sources)."""
    tokenizer: Optional[str] = None
    """Path to an existing sentencepiece .model; None trains one on the corpus and caches it."""
    tokenizer_type: str = "bpe"
    """Sentencepiece model type when training one: bpe | unigram."""
    tokenizer_sample_bytes: int = 4_000_000
    """Bytes of text (a deterministic sample of documents) the tokenizer is trained on."""
    seq_len: int = 128
    """Tokens per training sequence; windows hold seq_len + 1 tokens (inputs and shifted targets)."""
    val_fraction: float = 0.02
    """Fraction of documents held out for validation, chosen by a hash of the text so splits never overlap."""
    num_proc: int = 2
    """Processes for datasets.map when tokenizing."""
    cache_dir: str = ".cache/growlm"
    """Where the embedded corpus, trained tokenizers and packed windows are cached."""
    embedded_max_bytes: int = 3_000_000
    """Size cap of the embedded corpus (pydoc topics first, then standard-library sources by name)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise DataError naming the first bad key; also called by prepare_data on merged configs."""
        for name in ("seq_len", "num_proc", "tokenizer_sample_bytes", "embedded_max_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise DataError(f"data.{name} must be a positive integer, got {value!r}")
        if self.tokenizer_type not in TOKENIZER_TYPES:
            raise DataError(
                f"data.tokenizer_type={self.tokenizer_type!r} is not supported; valid: {', '.join(TOKENIZER_TYPES)}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise DataError(
                f"data.val_fraction={self.val_fraction!r} must be in (0, 1): both a train and a val split are needed"
            )
        for name in ("source", "text_field", "cache_dir"):
            if not str(getattr(self, name)).strip():
                raise DataError(f"data.{name} must not be empty")
        if self.source.startswith("hf:") and not self.source[3:].split(":")[0]:
            raise DataError(f"data.source={self.source!r} names no dataset; expected hf:<dataset name>[:<config>]")


def check_seq_len(cfg: DataConfig, max_seq_len: int) -> None:
    """Fail before any data work when training windows would be longer than the model's positions."""
    if cfg.seq_len > max_seq_len:
        raise DataError(
            f"data.seq_len={cfg.seq_len} exceeds model.max_seq_len={max_seq_len}; "
            f"set data.seq_len <= {max_seq_len} or raise model.max_seq_len"
        )
