"""One run per run directory: an exclusive lock, held by rank 0 for the whole run.

Two processes training into the same `runs/<name>/` would interleave metrics, overwrite each other's
checkpoints and prune each other's files. The lock is an flock on `<run>/.lock` (released by the kernel when
the holder exits, even on SIGKILL, so a crash never leaves a stale lock); the file names the holder (host,
pid, start time) so a refused run can say who has it. flock is per host: on a shared file system across nodes
it protects as far as that file system's locks do (local disks and NFSv4 do).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

from pretrain.config import ConfigError
from storage import run_files
from storage.io import file_in_the_way

LOCK = ".lock"
RUN_FILES = (LOCK, run_files.CONFIG, run_files.METRICS, "checkpoints")
"""What every run directory holds once a run has started in it (the lock first of all)."""


class RunDirInUse(ConfigError):
    """Another process holds the run directory."""


def check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory that is a file, or a folder of someone else's (files, none of a run's): a run
    would write its checkpoints and logs among them."""
    if (blocker := file_in_the_way(run_dir)) is not None:
        raise ConfigError(f"run directory {run_dir} (run.out_dir/run.name): {blocker} is a file; choose another "
                          "run.name or run.out_dir")
    entries = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    if entries and not set(entries) & set(RUN_FILES):
        raise ConfigError(f"run directory {run_dir} (run.out_dir/run.name) holds {entries[:5]} and none of a run's "
                          f"files {list(RUN_FILES)}: a run would write among them; choose another run.name or "
                          "run.out_dir")


def acquire(run_dir: Path) -> IO:
    """Take the run directory's lock for the life of the returned file (keep it open); raises RunDirInUse."""
    check_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(run_dir)
        handle.close()
        raise RunDirInUse(f"run directory {run_dir} is in use by {holder}; wait for that run to end, stop it, "
                          "or choose another run.name") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
    handle.flush()
    return handle


def check_free(run_dir: Path) -> None:
    """Refuse early (before any rank starts) a run directory of someone else's, or one another process holds."""
    check_run_dir(run_dir)
    if (run_dir / LOCK).is_file():
        acquire(run_dir).close()


def _holder(run_dir: Path) -> str:
    try:
        info = json.loads((run_dir / LOCK).read_text())
        return f"host {info['host']}, pid {info['pid']} (since {info['since']})"
    except (OSError, ValueError, KeyError):
        return "another process"
