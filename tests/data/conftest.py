"""Data fixtures: a small embedded corpus and one tokenizer trained on it, shared by the whole session."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain.data import DataConfig, prepare_data

VOCAB = 512


@pytest.fixture(scope="session")
def embedded(tmp_path_factory):
    """prepare_data on a 300 KB embedded corpus (trains the session's tokenizer once)."""
    cfg = DataConfig(cache_dir=str(tmp_path_factory.mktemp("cache")), embedded_max_bytes=300_000, seq_len=64,
                     val_fraction=0.1, num_proc=1)
    return cfg, prepare_data(cfg, VOCAB)


@pytest.fixture(scope="session")
def tokenizer_path(embedded) -> str:
    return str(embedded[1].tokenizer_path)


@pytest.fixture(scope="session")
def corpus_texts(embedded) -> list[str]:
    """The embedded corpus's documents, in order."""
    cfg, _ = embedded
    path = next(Path(cfg.cache_dir, "corpus").glob("*.jsonl"))
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="session")
def vocab() -> int:
    return VOCAB
