"""DeepSpeed's JIT-built CPU ops (its shared-memory all-reduce, CPU Adam): a build killed midway must not hang
every launch.

Checked by `python -m pretrain` on every start, the launcher's `--check` and each rank: the ranks are the
processes that would wait on the lock, and a launch may skip the check. The launcher gives each Python
environment its own build directory (`launch.command.extensions_dir`).
"""
from __future__ import annotations

import glob
import os
import time

from pretrain.config import ConfigError

STALE_BUILD_LOCK_S = 600
"""A torch-extension build lock older than this is stale: DeepSpeed's CPU ops build in well under a minute."""


def stale_build_locks(now: float | None = None) -> list[tuple[str, float]]:
    """(path, age in s) of torch-extension build locks older than STALE_BUILD_LOCK_S. A process killed while
    JIT-building a DeepSpeed op leaves `<op>/lock` behind, and every later launch then waits on it forever
    without a word."""
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    now = time.time() if now is None else now
    locks = [(path, now - os.path.getmtime(path)) for path in glob.glob(os.path.join(root, "*", "*", "lock"))]
    return [(path, age) for path, age in locks if age > STALE_BUILD_LOCK_S]


def refuse_stale_build_locks() -> None:
    """Raise a ConfigError naming every stale lock and the command that removes it."""
    found = stale_build_locks()
    if found:
        raise ConfigError("; ".join(
            f"{lock} is a torch-extension build lock {age / 60:.0f} min old: a build was killed midway, and every "
            f"launch would wait on it forever. If no build is running, delete it: rm {lock}" for lock, age in found))
