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

LOCK = ".lock"


class RunDirInUse(ConfigError):
    """Another process holds the run directory."""


def acquire(run_dir: Path) -> IO:
    """Take the run directory's lock for the life of the returned file (keep it open); raises RunDirInUse."""
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


def acquire_on_all_ranks(run_dir: Path, is_main: bool) -> IO | None:
    """Rank 0 takes the lock before anything is written; every rank learns the outcome (a collective), so a
    refused run stops on all ranks instead of leaving the others at a barrier. Rank 0 gets the lock file."""
    import torch

    from pretrain import dist

    lock, refusal = None, None
    if is_main:
        try:
            lock = acquire(run_dir)
        except RunDirInUse as err:
            refusal = err
    if dist.all_reduce_sum(torch.tensor([0.0 if refusal is None else 1.0])).item() > 0:
        raise refusal or RunDirInUse(f"run directory {run_dir} is in use (see rank 0)")
    return lock


def check_free(run_dir: Path) -> None:
    """Refuse early (before any rank starts) when another process holds the run directory."""
    if (run_dir / LOCK).is_file():
        acquire(run_dir).close()


def _holder(run_dir: Path) -> str:
    try:
        info = json.loads((run_dir / LOCK).read_text())
        return f"host {info['host']}, pid {info['pid']} (since {info['since']})"
    except (OSError, ValueError, KeyError):
        return "another process"
