"""The checkpoint folder format: its layout, names and verification, in one place for everyone who reads it.

The trainer writes checkpoints; growth, the jobs and the scripts only read them. What a checkpoint looks like
on disk therefore lives here, beside the model, so readers need nothing of the trainer.
Layout of `<run>/checkpoints/`:
    step_<N>/            DeepSpeed files + our own, and `manifest.json` (written last: a step dir without it is
                         partial) recording every file's size and content hash
    latest               the tag of the newest complete checkpoint
"""
from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import xxhash

from settings.errors import UserError
from storage import pickles
from storage.io import atomic_write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest"
WEIGHTS = "model.pt"
WEIGHTS_CONFIG = "model_config.json"
HASHES = "xxh3_64"
"""Manifest key of the per-file content hashes (manifests written before it have sizes only)."""
STEP_DIR = re.compile(r"^step_(\d+)$")
"""The name of a checkpoint folder (and of a job's output folder for it): `step_<N>`."""
_VERIFIED: set[tuple[str, int]] = set()
"""Manifests (path, mtime) whose files this process has hashed already: resume verifies a checkpoint
several times (the pre-launch check, the choice of checkpoint, the load), the bytes are read once."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, partial or inconsistent; the message names the file."""


def tag_for(step: int) -> str:
    return f"step_{step}"


def step_of(path: str | Path) -> int | None:
    """N for a folder named `step_<N>`, else None."""
    m = STEP_DIR.match(Path(path).name)
    return int(m.group(1)) if m else None


def file_hash(path: Path, block: int = 1 << 23) -> str:
    """xxh3-64 of a file's bytes: ~10x faster than sha256, and corruption (not forgery) is what it guards."""
    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def verify(ckpt: Path) -> dict[str, Any]:
    """The manifest of a complete checkpoint; raises naming the first missing, truncated or corrupted file
    (sizes always; content hashes where the manifest records them, checked once per process) or the first
    file whose pickle could run code (pickles.check_folder)."""
    manifest_path = ckpt / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{ckpt} is not a complete checkpoint: {MANIFEST} is missing (interrupted save?)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files, hashes = manifest["files"], manifest.get(HASHES, {})
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{manifest_path} is damaged ({type(err).__name__}: {err})") from None
    for rel, size in files.items():
        path = ckpt / rel
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} listed in the manifest is missing")
        if path.stat().st_size != size:
            raise CheckpointError(f"checkpoint file {path} has {path.stat().st_size} bytes, manifest says {size}")
    stamp = (str(manifest_path.resolve()), manifest_path.stat().st_mtime_ns)
    if stamp not in _VERIFIED:
        for rel, expected in hashes.items():
            if file_hash(ckpt / rel) != expected:
                raise CheckpointError(f"checkpoint file {ckpt / rel} is corrupted: its content hash differs from "
                                      f"the manifest's (same size, other bytes)")
        try:
            pickles.check_folder(ckpt)
        except pickles.UnsafePickle as err:
            raise CheckpointError(str(err)) from None
        _VERIFIED.add(stamp)
    return manifest


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every complete checkpoint under root, oldest first."""
    found = []
    for d in root.glob("step_*") if root.is_dir() else []:
        step = step_of(d)
        if step is not None and (d / MANIFEST).is_file():
            found.append((step, d))
    return sorted(found)


def latest(root: Path) -> Path | None:
    """The checkpoint `latest` names, or None when there is none yet."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    ckpt = root / pointer.read_text().strip()
    verify(ckpt)
    return ckpt


def locate(path: Path) -> Path:
    """The checkpoint a user means by any of the three forms they type: `checkpoints/` (the root: the step
    `latest` names), `checkpoints/latest` (DeepSpeed's pointer file, likewise) or `checkpoints/step_<N>`.
    A weights folder (growth output) is returned as it is."""
    path = Path(path)
    if path.name == LATEST and path.is_file():
        path = path.parent
    if not path.is_dir():
        what = (f"{str(path)!r} is a file, not a checkpoint folder (its folder is {str(path.parent)!r})"
                if path.exists() else f"checkpoint {str(path)!r} does not exist")
        raise CheckpointError(f"{what}; give a checkpoints/ root, its latest file, a checkpoints/step_<N> folder "
                              "or a weights folder")
    if (path / LATEST).is_file() and not (path / WEIGHTS).is_file():
        return latest(path)
    return path


def write_manifest(ckpt: Path, step: int, meta: dict[str, Any]) -> None:
    """Size and content hash of every file, written last: a checkpoint without it is partial."""
    paths = [p for p in sorted(ckpt.rglob("*")) if p.is_file() and p.name != MANIFEST]
    t0 = time.perf_counter()
    hashes = {str(p.relative_to(ckpt)): file_hash(p) for p in paths}
    log.info("checkpoint %s: hashed %d files (%.1f MB) in %.2f s", ckpt.name, len(paths),
             sum(p.stat().st_size for p in paths) / 1e6, time.perf_counter() - t0)
    atomic_write_json(ckpt / MANIFEST, {"step": step, "files": {str(p.relative_to(ckpt)): p.stat().st_size for p in paths},
                                        HASHES: hashes, "time": time.time(), "meta": meta})
