"""The one base of every error a user's input can cause, and the boundary each command runs inside.

In layer 0 so that every package's errors derive from it (the model's shape errors too). A command's `main`
runs its work through `user_errors`: a `UserError` becomes one `error:` line and exit code 2; anything else is a
bug and keeps its traceback. Each package still names its own kind (ConfigError, DataError, CheckpointError,
...) so callers can tell them apart.
"""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """A mistake in what the user gave (a config key, a flag, a file): the message names it and what is valid."""


def user_errors(work: Callable[[], int], prefix: str = "") -> int:
    """`work()`'s exit code; a UserError it raises is printed as `error: <prefix><message>` with exit code 2."""
    try:
        return work()
    except UserError as err:
        print(f"error: {prefix}{err}", file=sys.stderr)
        return 2
