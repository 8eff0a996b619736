"""Sentencepiece tokenizer: train one on a corpus sample (cached) or load an existing .model (an HF
tokenizer.json is handed to pretrain.data.hf_tokenizer).

Ids: unk=0, bos=1, eos=2, no pad. Each document is encoded WITHOUT a BOS and followed by one EOS; packed
windows therefore read `doc EOS doc EOS ...`, and EOS is the only document boundary the model sees (as GPT-2's
<|endoftext|>). BOS exists in the vocabulary for generation-time prompts but is never inserted by the data.

Training settings keep code intact and the result reproducible: identity normalization, no extra-whitespace
removal and no dummy prefix (indentation and line starts survive a round trip), whitespace-only pieces
(runs of indentation become single tokens), byte fallback (no text is ever unknown), split digits, and
training sentences that keep their newlines (pieces such as "):\\n"; on the embedded corpus 6.5% fewer tokens
than training on single lines, where every newline becomes the byte piece <0x0A>). Sentencepiece's result
depends on its thread count (measured: 1, 2 and 16 threads give three different models, each reproducible),
so it is pinned: the same corpus gives the same tokenizer file on every machine.
"""
from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

import sentencepiece as spm

from pretrain.data import hf_tokenizer
from pretrain.data.errors import DataError
from storage.tokenizer_files import folder_of, is_hf_tokenizer

log = logging.getLogger(__name__)

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
_TRAIN_THREADS = 4
_CHUNK_CHARS = 2048  # training "sentences" are runs of whole lines up to this size
_SETTINGS_VERSION = 1  # bump when the trainer arguments below change, so cached tokenizers are retrained


def tokenizer_fingerprint(path: str | Path) -> str:
    """sha256 of what decides how text becomes ids (the resume check compares it)."""
    if is_hf_tokenizer(path):
        return hf_tokenizer.fingerprint(path)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def eos_id_of(path: str | Path) -> int:
    """The id that ends every document in the packed data (growlm's sentencepiece models: EOS_ID)."""
    if is_hf_tokenizer(path):
        return int(hf_tokenizer.load_cached(str(folder_of(path).resolve())).eos_token_id)
    return EOS_ID


def vocab_size_of(path: str | Path) -> int:
    """The number of ids a tokenizer produces (sentencepiece pieces, or an HF tokenizer's length)."""
    if is_hf_tokenizer(path):
        return len(hf_tokenizer.load_cached(str(folder_of(path).resolve())))
    try:
        return spm.SentencePieceProcessor(model_file=str(path)).vocab_size()
    except (OSError, RuntimeError) as exc:
        raise DataError(f"tokenizer {str(path)!r} is neither an HF tokenizer nor a sentencepiece model: {exc}") \
            from None


def load_tokenizer(path: str | Path, vocab_size: int):
    """Load a sentencepiece .model or an HF tokenizer and check it fits the model's embedding (a mismatch
    would index out of range)."""
    path = Path(path)
    if is_hf_tokenizer(path):
        return hf_tokenizer.load(path, vocab_size)
    if not path.is_file():
        raise DataError(f"data.tokenizer={str(path)!r}: no such file")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise DataError(f"data.tokenizer={str(path)!r} is not a sentencepiece model: {exc}") from exc
    if sp.vocab_size() != vocab_size:
        raise DataError(
            f"tokenizer {path} has vocab size {sp.vocab_size()} but model.vocab_size={vocab_size}; "
            f"set model.vocab_size={sp.vocab_size()} or use a tokenizer with {vocab_size} pieces"
        )
    if sp.eos_id() != EOS_ID:
        raise DataError(f"tokenizer {path} has eos id {sp.eos_id()}; growlm needs eos={EOS_ID}")
    return sp


def tokenizer_cache_path(cache_dir: str | Path, corpus_key: str, vocab_size: int, model_type: str,
                         sample_bytes: int) -> Path:
    """Where the tokenizer trained for this corpus and these settings lives (or will live)."""
    parts = f"{corpus_key}|{vocab_size}|{model_type}|{sample_bytes}|v{_SETTINGS_VERSION}"
    key = hashlib.sha256(parts.encode()).hexdigest()[:16]
    return Path(cache_dir) / "tokenizers" / f"{model_type}-{vocab_size}-{key}.model"


def _training_sentences(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        buf: list[str] = []
        size = 0
        for line in text.splitlines(keepends=True):
            if buf and size + len(line) > _CHUNK_CHARS:
                yield "".join(buf)
                buf, size = [], 0
            buf.append(line)
            size += len(line)
        if buf:
            yield "".join(buf)


def train_tokenizer(texts: Iterable[str], path: Path, vocab_size: int, model_type: str) -> Path:
    """Train a sentencepiece model on `texts` and write it atomically to `path`."""
    start = time.perf_counter()
    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_sentences(texts),
            model_writer=out,
            vocab_size=vocab_size,
            model_type=model_type,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=-1,
            byte_fallback=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            normalization_rule_name="identity",
            character_coverage=0.9995,
            max_sentence_length=1 << 16,  # bytes; a longer single line (minified data) is skipped
            num_threads=_TRAIN_THREADS,
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise DataError(
            f"training a {model_type} tokenizer with model.vocab_size={vocab_size} failed: {exc}. "
            f"The corpus (or data.tokenizer_sample_bytes) may be too small for this vocabulary"
        ) from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(out.getvalue())
    os.replace(tmp, path)
    log.info("trained %s tokenizer (vocab %d) in %.1fs -> %s", model_type, vocab_size,
             time.perf_counter() - start, path)
    return path


@functools.lru_cache(maxsize=4)
def _processor(path: str) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=path)


def encode_batch(batch: dict, *, tokenizer_path: str, text_field: str) -> dict:
    """datasets.map function: each document's ids followed by EOS (no BOS; see module docstring). An HF
    tokenizer encodes as its model family does (hf_tokenizer.encode_batch)."""
    if is_hf_tokenizer(tokenizer_path):
        return hf_tokenizer.encode_batch(batch, tokenizer_path=tokenizer_path, text_field=text_field)
    ids = _processor(tokenizer_path).encode(batch[text_field])
    for doc in ids:
        doc.append(EOS_ID)
    return {"ids": ids, "num_tokens": [len(doc) for doc in ids]}
