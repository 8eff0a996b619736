"""The one error type of the experiment commands, so callers can tell bad input from bugs."""
from __future__ import annotations

from settings.errors import UserError


class ExperimentError(UserError, ValueError):
    """A spec, a run directory or a flag an experiment command cannot use; the message names it."""
