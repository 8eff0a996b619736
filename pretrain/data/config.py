"""The `data` section of a run config: one typed dataclass, validated on construction (each field's valid
values in its metadata, settings/fields.py; the checks across fields below)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from pretrain.data.errors import DataError
from settings.fields import check_fields, choice, inside, non_negative, positive

TOKENIZER_TYPES = ("bpe", "unigram")


SOURCE_FORMATS = ("auto", "growlm", "megatron")
POSITIONS = ("window", "document")


@dataclass
class SourceSpec:
    """One pre-tokenized corpus of a mixture."""

    path: str = ""
    """A growlm shard directory (`python -m pretrain.data prepare`), or Megatron/gpt-neox data: a `<prefix>`
    of `<prefix>.bin` + `<prefix>.idx`, or a glob of such .bin files."""
    weight: float = non_negative(1.0)
    """Relative share of training windows drawn from this source (normalized over the list)."""
    name: Optional[str] = None
    """Label in metrics (`data/<name>/tokens`); default: the path's last component."""
    format: str = choice("auto", SOURCE_FORMATS)
    """auto | growlm | megatron."""
    val_fraction: float = inside(0.01, 0.0, 1.0)
    """Formats without separate validation data: the last fraction of each file's windows is held out."""

    def __post_init__(self) -> None:
        if not str(self.path).strip():
            raise DataError("data.sources[].path must name a corpus")
        try:
            check_fields(self, "data.sources[].")
        except ValueError as err:
            raise DataError(f"{err} (source {self.path!r})") from None

    @property
    def label(self) -> str:
        return self.name or Path(self.path.rstrip("/")).name.replace("*", "_")


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
    """An existing sentencepiece .model, or an HF tokenizer (its folder or tokenizer.json); None trains a
    sentencepiece model on the corpus and caches it (with `sources`: a growlm shard directory's own)."""
    tokenizer_type: str = choice("bpe", TOKENIZER_TYPES)
    """Sentencepiece model type when training one: bpe | unigram."""
    tokenizer_sample_bytes: int = positive(4_000_000)
    """Bytes of text (a deterministic sample of documents) the tokenizer is trained on."""
    seq_len: int = positive(128)
    """Tokens per training sequence; windows hold seq_len + 1 tokens (inputs and shifted targets)."""
    val_fraction: float = inside(0.02, 0.0, 1.0)
    """Fraction of documents held out for validation, chosen by a hash of the text so splits never overlap."""
    num_proc: int = positive(2)
    """Processes for datasets.map when tokenizing."""
    cache_dir: str = ".cache/growlm"
    """Where the embedded corpus, trained tokenizers and packed windows are cached."""
    embedded_max_bytes: int = positive(3_000_000)
    """Size cap of the embedded corpus (pydoc topics first, then standard-library sources by name)."""
    sources: List[SourceSpec] = field(default_factory=list)
    """Pre-tokenized corpora mixed by weight; when given, `source` is not read (see pretrain/data/mixture.py)."""
    streaming: bool = False
    """Read `source` with `datasets` streaming, tokenizing and packing on the fly (nothing cached: for sources
    larger than the disk); needs `tokenizer`; a resume needs the same number of ranks."""
    stream_val_windows: int = positive(64)
    """With streaming: validation windows taken from the start of the stream's held-out documents."""
    document_masking: bool = False
    """Attention stays inside each document of a packed window (block-causal; documents end in EOS), and the
    loss of predicting a next document's first token from the EOS before it is masked."""
    document_positions: str = choice("window", POSITIONS)
    """window (RoPE positions count through the window) | document (they restart at 0 in each document)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise DataError naming the first bad key; also called by prepare_data on merged configs."""
        try:
            check_fields(self, "data.")
        except ValueError as err:
            raise DataError(str(err)) from None
        if self.streaming and (self.sources or not self.tokenizer):
            raise DataError("data.streaming reads data.source with a given data.tokenizer (set it; streaming "
                            "trains no tokenizer) and cannot be combined with data.sources")
        if self.sources and sum(s.weight for s in self.sources) <= 0:
            raise DataError(f"data.sources weights {[s.weight for s in self.sources]} must sum to a positive number")
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
