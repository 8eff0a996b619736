"""What may be unpickled from a checkpoint: growlm's own reads use `weights_only=True`; DeepSpeed's do not.

DeepSpeed loads its optimizer-state files (and zero_to_fp32 / ds_to_universal read them) with
`weights_only=False`, so a checkpoint folder someone hands you could run code at resume or export. Before any
of that, every `.pt` file's pickle is scanned (its globals are listed without loading anything) and a global
beyond torch's weights-only allowlist and the few classes DeepSpeed and numpy's RNG state need is refused.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from settings.errors import UserError

NUMPY_RNG_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
"""What numpy's generator state needs to load with `weights_only=True` (no other code can run from the file)."""
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
"""The classes DeepSpeed (0.19) pickles into optimizer-state files: plain records and an enum."""
TRUST_ENV = "GROWLM_TRUST_PICKLES"


class UnsafePickle(UserError, RuntimeError):
    """A checkpoint file whose pickle names a global that could run code when loaded."""


def _name(obj: object) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


ALLOWED = frozenset(DEEPSPEED_GLOBALS) | {_name(g) for g in NUMPY_RNG_GLOBALS}


def check_folder(folder: Path) -> None:
    """Raise UnsafePickle naming the first `.pt` file under `folder` whose pickle has a global outside ALLOWED
    (a file that cannot be scanned counts as unsafe). GROWLM_TRUST_PICKLES=1 skips the scan."""
    if os.environ.get(TRUST_ENV) == "1":
        return
    for path in sorted(folder.rglob("*.pt")):
        try:
            found = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception as err:  # not a zip-format torch file: it cannot be checked without running it
            found = {f"<unreadable pickle: {type(err).__name__}: {err}>"}
        if unsafe := sorted(found - ALLOWED):
            raise UnsafePickle(
                f"checkpoint file {path} would run code when DeepSpeed loads it: its pickle names {unsafe}, "
                f"beyond what growlm and DeepSpeed save. If you wrote this checkpoint yourself (e.g. with another "
                f"DeepSpeed version), set {TRUST_ENV}=1 to load it anyway")


def deepspeed_classes() -> list[type]:
    """DEEPSPEED_GLOBALS as objects, for `torch.serialization.safe_globals` in growlm's own reads."""
    import importlib

    classes = []
    for name in DEEPSPEED_GLOBALS:
        module, _, attr = name.rpartition(".")
        classes.append(getattr(importlib.import_module(module), attr))
    return classes
