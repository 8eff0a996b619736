"""Which split a document belongs to: a salted hash of its text, so the split never depends on how a source
was read (whole, in shards, or streamed) and duplicated texts always share a side."""
from __future__ import annotations

import hashlib

import numpy as np


def doc_hash(text: str, seed: int) -> int:
    """63-bit hash of a document's text salted with the seed (63 bits so arrow stores it as int64)."""
    digest = hashlib.blake2b(f"{seed}\0".encode() + text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def is_val_document(text: str, seed: int, val_fraction: float) -> bool:
    """The per-document split rule of a source read in pieces (shards, streams): the hash below val_fraction of
    its 63-bit range, so the split depends on the text alone, not on how the source was cut."""
    return doc_hash(text, seed) < val_fraction * (1 << 63)


def split_by_hash(hashes: np.ndarray, val_fraction: float) -> dict[str, np.ndarray]:
    """Indices of train and val documents: the round(val_fraction * n) smallest hashes (at least one) go to val.

    Equal texts have equal hashes and so share a split: a duplicated document never sits on both sides.
    """
    k = max(1, round(val_fraction * len(hashes)))
    is_val = hashes <= np.sort(hashes)[k - 1]
    return {"train": np.flatnonzero(~is_val), "val": np.flatnonzero(is_val)}
