"""Checkpoints: DeepSpeed state + our client state, a manifest written last, `latest` updated atomically.

Layout of `<run>/checkpoints/`:
    step_<N>/            DeepSpeed files (every rank writes its shard) + rng/rank_<r>.pt + config.yaml +
                         tokenizer.model + manifest.json (written last: a step dir without it is partial)
    latest               the tag of the newest complete checkpoint, replaced atomically after the manifest
A crash at any point leaves `latest` naming a complete checkpoint; older checkpoints are never touched
before a newer one is complete. Here: the engine's collective save and load, and the housekeeping around
them (universal conversion, RNG states). The file formats live in `storage`, which growth, the jobs and the
scripts read as well: the folder layout, manifest and verification (`storage.folders`), which checkpoints to
keep and resume from (`storage.retention`), weights folders (`storage.weights`), the pickle allowlist
(`storage.pickles`).
"""
from __future__ import annotations

import errno
import json
import logging
import random
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from pretrain import dist
from storage import folders, pickles, retention
from storage.folders import LATEST, MANIFEST, CheckpointError, tag_for, verify
from storage.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from storage.universal import to_universal, universal_dir

log = logging.getLogger(__name__)

RANK_STATE = "rank_state"


def save(engine, root: Path, step: int, client_state: dict[str, Any], extra_files: dict[str, Path], keep: int,
         meta: dict[str, Any] | None = None, rank_state: dict[str, Any] | None = None) -> Path:
    """Save a checkpoint collectively (every rank must call this), then publish it as `latest`.

    `meta` (model shape, ZeRO stage, world size, tokenizer hash, ...) goes into the manifest, so a resume can
    check compatibility before DeepSpeed reads anything. `rank_state` (JSON data that differs per rank, e.g.
    a data stream's position) is written by each rank to `rank_state/rank_<r>.json`; `load` returns it."""
    ckpt = write_rank_files(engine, root, step, client_state, rank_state)
    dist.barrier()
    if dist.is_main():
        publish(ckpt, step, extra_files, meta or {}, keep)
    dist.barrier()
    return ckpt


def write_rank_files(engine, root: Path, step: int, client_state: dict[str, Any],
                     rank_state: dict[str, Any] | None = None) -> Path:
    """This rank's files of checkpoint `step` (collective): DeepSpeed's, written through
    `engine.checkpoint_engine`, then its RNG states and `rank_state`. Rank 0 first clears an earlier attempt
    at the same step."""
    ckpt = root / tag_for(step)
    if dist.is_main():
        _clear_previous(ckpt)
    dist.barrier()
    with naming_full_disk(ckpt):
        engine.save_checkpoint(str(root), tag=ckpt.name, client_state=client_state, save_latest=False)
        _save_rng(ckpt / "rng" / f"rank_{dist.rank()}.pt")
        if rank_state is not None:
            (ckpt / RANK_STATE).mkdir(exist_ok=True)
            atomic_write_json(ckpt / RANK_STATE / f"rank_{dist.rank()}.json", rank_state)
    return ckpt


def publish(ckpt: Path, step: int, extra_files: dict[str, Path], meta: dict[str, Any], keep: int) -> None:
    """Rank 0, once every rank's files of `ckpt` are complete: the run's files beside them, the manifest
    (written last: it makes the checkpoint complete), `latest` replaced atomically, then pruning."""
    with naming_full_disk(ckpt):
        for name, src in extra_files.items():
            atomic_write_bytes(ckpt / name, Path(src).read_bytes())
        folders.write_manifest(ckpt, step, meta)
    atomic_write_text(ckpt.parent / LATEST, ckpt.name + "\n")
    retention.prune(ckpt.parent, keep)


class Saves:
    """A run's checkpoint saves, each complete when `save` returns (the default; `pretrain.async_save`
    returns earlier). `completed` tells the trainer which checkpoints its callbacks may read."""

    def __init__(self, root: Path, keep: int):
        self.root, self.keep = root, keep
        self._completed: list[Path] = []

    def save(self, engine, step: int, client_state: dict[str, Any], extra_files: dict[str, Path],
             meta: dict[str, Any], rank_state: dict[str, Any] | None = None) -> None:
        """A complete checkpoint of `step` (collective; `save` above)."""
        self._completed.append(save(engine, self.root, step, client_state, extra_files, self.keep, meta,
                                    rank_state))

    def completed(self, wait: bool = False) -> list[Path]:
        """The checkpoints completed since the last call, oldest first (collective; `wait`: for the one in
        flight as well)."""
        done, self._completed = self._completed, []
        return done

    def before_update(self) -> None:
        """Training is about to change the parameters or optimizer state in place: return once no save still
        needs them as they are (here a save is complete when it returns; `pretrain.async_save` may wait)."""

    def settle(self) -> None:
        """Training is dying: finish what this rank still writes (nothing here), without collectives."""


class OutOfSpace(CheckpointError):
    """The disk filled while a checkpoint was written; `latest` still names the previous complete one."""


@contextmanager
def naming_full_disk(ckpt: Path) -> Iterator[None]:
    """A full disk while `ckpt` is written raises OutOfSpace, which says where, how much is free and what
    `latest` still names, instead of a bare ENOSPC."""
    try:
        yield
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise OutOfSpace(_out_of_space(ckpt.parent, ckpt.name)) from err
        raise


def _out_of_space(root: Path, tag: str) -> str:
    """What a user needs to act on a full disk: where, how much is free, how much a checkpoint takes."""
    previous = folders.latest(root) if (root / LATEST).is_file() else None
    size = sum(p.stat().st_size for p in previous.rglob("*") if p.is_file()) if previous else None
    free = shutil.disk_usage(root).free
    need = f"the last complete checkpoint ({previous.name}) takes {size / 2**20:.1f} MiB" if size else \
        "no complete checkpoint yet to size one by"
    kept = f"latest still names {previous.name}, which is intact" if previous else "no checkpoint was published"
    return (f"no space left on the device of {root} while saving {tag} ({free / 2**20:.1f} MiB free; {need}): "
            f"free at least that much (or lower checkpoint.keep) and resume; {kept}")


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
