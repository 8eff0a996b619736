"""Data pipeline: corpus -> tokenizer -> packed, cached windows -> resumable step sampler.

The config and its errors import nothing heavy (the run config imports them); the pipeline (datasets, numpy)
is imported when first used.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from pretrain.data.config import DataConfig, check_seq_len
from pretrain.data.errors import DataError

_LAZY = {"PackedData": "pretrain.data.dataset", "prepare_data": "pretrain.data.dataset",
         "StepSampler": "pretrain.data.sampler", "get_batch": "pretrain.data.sampler"}

__all__ = ["DataConfig", "DataError", "check_seq_len", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pretrain.data' has no attribute {name!r}")
