"""Checkpoints: DeepSpeed state + our client state, a manifest written last, `latest` updated atomically.

Layout of `<run>/checkpoints/`:
    step_<N>/            DeepSpeed files (every rank writes its shard) + rng/rank_<r>.pt + config.yaml +
                         tokenizer.model + manifest.json (written last: a step dir without it is partial)
    latest               the tag of the newest complete checkpoint, replaced atomically after the manifest
A crash at any point leaves `latest` naming a complete checkpoint; older checkpoints are never touched
before a newer one is complete. Here: the engine's collective save and load, and the housekeeping around
them (fallback, universal conversion, pruning, readers' locks). The formats that growth, the jobs and the
scripts read as well live in `model`: the folder layout and its verification in `model.folders`, reading
weights and the portable weights folder in `model.weights`, the pickle allowlist in `model.pickles`.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model import pickles
from model.folders import (HASHES, LATEST, MANIFEST, CheckpointError, complete_checkpoints, file_hash, latest,
                           tag_for, verify)
from model.universal import to_universal, universal_dir
from pretrain import dist
from model.io import atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

RANK_STATE = "rank_state"
READERS = ".readers"
"""In a checkpoint: the lock file readers (detached jobs) hold shared so that pruning skips the checkpoint."""


def save(engine, root: Path, step: int, client_state: dict[str, Any], extra_files: dict[str, Path], keep: int,
         meta: dict[str, Any] | None = None, rank_state: dict[str, Any] | None = None) -> Path:
    """Save a checkpoint collectively (every rank must call this), then publish it as `latest`.

    `meta` (model shape, ZeRO stage, world size, tokenizer hash, ...) goes into the manifest, so a resume can
    check compatibility before DeepSpeed reads anything. `rank_state` (JSON data that differs per rank, e.g.
    a data stream's position) is written by each rank to `rank_state/rank_<r>.json`; `load` returns it."""
    tag = tag_for(step)
    ckpt = root / tag
    if dist.is_main():
        _clear_previous(ckpt)
    dist.barrier()
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    _save_rng(ckpt / "rng" / f"rank_{dist.rank()}.pt")
    if rank_state is not None:
        (ckpt / RANK_STATE).mkdir(exist_ok=True)
        atomic_write_json(ckpt / RANK_STATE / f"rank_{dist.rank()}.json", rank_state)
    dist.barrier()
    if dist.is_main():
        for name, src in extra_files.items():
            atomic_write_bytes(ckpt / name, Path(src).read_bytes())
        _write_manifest(ckpt, step, meta or {})
        atomic_write_text(root / LATEST, tag + "\n")
        prune(root, keep)
    dist.barrier()
    return ckpt


def _clear_previous(ckpt: Path) -> None:
    """A partial dir from a crash is removed; a complete one (after a rollback) is moved aside, not overwritten."""
    if not ckpt.exists():
        return
    if (ckpt / MANIFEST).exists():
        aside = ckpt.with_name(f"{ckpt.name}.replaced-{int(time.time())}")
        log.warning("checkpoint %s exists; moving it to %s before saving again", ckpt, aside)
        ckpt.rename(aside)
    else:
        log.warning("removing partial checkpoint %s (no %s)", ckpt, MANIFEST)
        shutil.rmtree(ckpt)


def _write_manifest(ckpt: Path, step: int, meta: dict[str, Any]) -> None:
    """Size and content hash of every file, written last: a checkpoint without it is partial."""
    paths = [p for p in sorted(ckpt.rglob("*")) if p.is_file() and p.name != MANIFEST]
    t0 = time.perf_counter()
    hashes = {str(p.relative_to(ckpt)): file_hash(p) for p in paths}
    log.info("checkpoint %s: hashed %d files (%.1f MB) in %.2f s", ckpt.name, len(paths),
             sum(p.stat().st_size for p in paths) / 1e6, time.perf_counter() - t0)
    atomic_write_json(ckpt / MANIFEST, {"step": step, "files": {str(p.relative_to(ckpt)): p.stat().st_size for p in paths},
                                        HASHES: hashes, "time": time.time(), "meta": meta})


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
    raise CheckpointError(f"no complete checkpoint under {root} verifies")


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


def load(engine, ckpt: Path, universal: bool = False) -> dict[str, Any]:
    """Load a complete checkpoint into the engine (collective); returns the client state.

    `universal` loads through DeepSpeed's universal form (another world size): rank 0 converts, and the
    engine's `load_universal` switch is on for this load only (left on, later ZeRO-3 saves lose model states).
    """
    verify(ckpt)
    source = ckpt
    if universal:
        if dist.is_main():
            to_universal(ckpt)
        dist.barrier()
        source = universal_dir(ckpt)
        pickles.check_folder(source)  # written by DeepSpeed's converter, but kept on disk between runs
        engine._config.load_universal_checkpoint = True
    try:
        path, client_state = engine.load_checkpoint(
            str(source.parent), tag=source.name, load_optimizer_states=True, load_lr_scheduler_states=True
        )
    finally:
        engine._config.load_universal_checkpoint = False
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load {ckpt}")
    rng_file = ckpt / "rng" / f"rank_{dist.rank()}.pt"
    if rng_file.is_file():
        _load_rng(rng_file)
    rank_file = ckpt / RANK_STATE / f"rank_{dist.rank()}.json"
    client_state[RANK_STATE] = json.loads(rank_file.read_text()) if rank_file.is_file() else None
    return client_state


def _save_rng(path: Path) -> None:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _load_rng(path: Path) -> None:
    with torch.serialization.safe_globals(pickles.NUMPY_RNG_GLOBALS):  # numpy's generator state is arrays
        state = torch.load(path, weights_only=True)
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
