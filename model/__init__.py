"""The Llama-style decoder, its config, and conversion to/from Hugging Face transformers."""
from __future__ import annotations

from importlib import import_module
from typing import Any

from model.config import ModelConfig, ModelConfigError

# Imported when first used: torch (the run config imports `model.config` and must not pull it in), and
# transformers, which costs seconds and which few of the processes that import `model` need.
_LAZY_LLAMA = ("Llama", "LlamaOutput")
_LAZY_HF = (
    "from_hf_config",
    "from_hf_state_dict",
    "hf_tokenizer_config",
    "load_hf_folder",
    "save_hf_folder",
    "to_hf_config",
    "to_hf_state_dict",
)

__all__ = ["ModelConfig", "ModelConfigError", *_LAZY_LLAMA, *_LAZY_HF]


def __getattr__(name: str) -> Any:
    if name in _LAZY_LLAMA:
        return getattr(import_module("model.llama"), name)
    if name in _LAZY_HF:
        return getattr(import_module("model.hf"), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
