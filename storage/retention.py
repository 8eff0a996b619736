"""Which checkpoints a run keeps and resumes from: the resumable one (with fallback past a damaged `latest`),
pruning to the newest `keep`, and the shared lock by which a reader (a detached job) keeps a checkpoint from
being pruned under it."""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

from storage.folders import LATEST, CheckpointError, complete_checkpoints, latest, verify
from storage.universal import universal_dir

log = logging.getLogger(__name__)

READERS = ".readers"
"""In a checkpoint: the lock file readers (detached jobs) hold shared so that pruning skips the checkpoint."""


def resumable(root: Path, fallback: bool) -> Path | None:
    """The checkpoint to resume from: `latest`, or with `fallback` the newest older one that verifies when
    `latest` is partial, truncated or missing a file (the bad one is named in the log and left in place)."""
    try:
        return latest(root)
    except CheckpointError as err:
        if not fallback:
            raise CheckpointError(f"{err}; set checkpoint.fallback=true to resume from the previous one") from None
        log.error("%s; falling back to an older checkpoint", err)
    pointer = (root / LATEST).read_text().strip()
    for _, ckpt in reversed(complete_checkpoints(root)):
        if ckpt.name == pointer:
            continue
        try:
            verify(ckpt)
            return ckpt
        except CheckpointError as err:
            log.error("%s; trying an older one", err)
    raise CheckpointError(f"no complete checkpoint under {root} verifies (each is named in the log above); they "
                          "are left in place: start over with another run.name, or train.resume=never")


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints (never the one `latest` names, nor one a job is
    reading: it goes at a later save)."""
    pointer = (root / LATEST).read_text().strip() if (root / LATEST).is_file() else None
    for _, d in complete_checkpoints(root)[:-keep]:
        if d.name == pointer:
            continue
        if being_read(d):
            log.info("keeping %s for now: a job is reading it", d)
            continue
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(universal_dir(d), ignore_errors=True)


def hold_for_reading(ckpt: Path) -> int | None:
    """A file descriptor holding a shared lock on the checkpoint: prune leaves it alone while any process
    (a detached job inherits the descriptor) keeps it open. None when there is no such checkpoint (the job
    itself will say so)."""
    if not ckpt.is_dir():
        return None
    fd = os.open(ckpt / READERS, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def being_read(ckpt: Path) -> bool:
    if not (ckpt / READERS).is_file():
        return False
    fd = os.open(ckpt / READERS, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own lock
