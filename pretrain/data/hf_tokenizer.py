"""Hugging Face tokenizers (`tokenizer.json`, what Llama-3, SmolLM2, TinyLlama ship) for training data.

`data.tokenizer` names a folder holding tokenizer.json (and its tokenizer_config.json), or that tokenizer.json.
Documents are encoded as the model family does (`add_special_tokens`: its BOS where it prepends one) and end
in its EOS, so packed windows read `[BOS] doc EOS [BOS] doc EOS ...`. Its files travel with the run, its
checkpoints and an exported folder under the same names, so `AutoTokenizer` loads them anywhere.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from pretrain.data.errors import DataError
from storage.tokenizer_files import FILES, files, folder_of


def fingerprint(path: str | Path) -> str:
    """sha256 over the tokenizer's files (names and bytes): what decides how text becomes ids."""
    h = hashlib.sha256()
    for name, file in sorted(files(path).items()):
        h.update(name.encode() + b"\0" + file.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=4)
def load_cached(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def load(path: str | Path, vocab_size: int):
    """The tokenizer (transformers' fast tokenizer); refuses one without an EOS or whose size differs from
    the model's vocabulary."""
    path = Path(path)
    if not (folder_of(path) / FILES[0]).is_file():
        raise DataError(f"data.tokenizer={str(path)!r}: no {FILES[0]} there")
    if not (folder_of(path) / "tokenizer_config.json").is_file():
        raise DataError(f"data.tokenizer={str(path)!r}: {FILES[0]} without a tokenizer_config.json beside it names "
                        "no EOS token; give the model's tokenizer folder")
    try:
        tok = load_cached(str(folder_of(path).resolve()))
    except Exception as err:  # transformers raises many types for a bad file
        raise DataError(f"data.tokenizer={str(path)!r} cannot be loaded by transformers: {err}") from None
    if tok.eos_token_id is None:
        raise DataError(f"tokenizer {path} has no EOS token (tokenizer_config.json eos_token); growlm ends every "
                        "document with it")
    if len(tok) != vocab_size:
        raise DataError(f"tokenizer {path} has vocab size {len(tok)} but model.vocab_size={vocab_size}; set "
                        f"model.vocab_size={len(tok)} or use a tokenizer with {vocab_size} tokens")
    return tok


def encode_batch(batch: dict, *, tokenizer_path: str, text_field: str) -> dict:
    """datasets.map function: each document as the family encodes it (its BOS, if any), then its EOS."""
    tok = load_cached(str(folder_of(tokenizer_path).resolve()))
    ids = tok(batch[text_field], add_special_tokens=True)["input_ids"]
    for doc in ids:
        if not doc or doc[-1] != tok.eos_token_id:
            doc.append(tok.eos_token_id)
    return {"ids": ids, "num_tokens": [len(doc) for doc in ids]}
