"""What every growth operator shares: its error type, its result, and the state types it maps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from model import ModelConfig
from settings.errors import UserError
from storage.carry import OptState

__all__ = ["GrowthError", "GrowthResult", "OptState", "StateDict"]

StateDict = dict[str, Tensor]


class GrowthError(UserError, ValueError):
    """A growth request that cannot be honoured; the message names the field or value and what would be valid."""


@dataclass
class GrowthResult:
    """A grown model: its config, its state dict (loads strictly into `Llama(config)`), moments, and a record."""

    config: ModelConfig
    state_dict: StateDict
    opt_state: OptState | None
    """Per-parameter optimizer tensors mapped like the weights (see `moments.py`); None when none was given."""
    record: dict[str, Any]
    """JSON-serializable description of what maps to what, stored with the grown checkpoint."""
