"""Checkpoints: DeepSpeed state + our client state, a manifest written last, `latest` updated atomically.

Layout of `<run>/checkpoints/`:
    step_<N>/            DeepSpeed files (every rank writes its shard) + rng/rank_<r>.pt + config.yaml +
                         tokenizer.model + manifest.json (written last: a step dir without it is partial)
    latest               the tag of the newest complete checkpoint, replaced atomically after the manifest
A crash at any point leaves `latest` naming a complete checkpoint; older checkpoints are never touched
before a newer one is complete. Also here (shared with `growth` and `scripts`, never the reverse): reading a
checkpoint's consolidated fp32 weights, and the portable weights folder (`model.pt` + `model_config.json`)
that growth writes and `train.init_from` reads.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import random
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from model.config import ModelConfig
from pretrain import dist, pickles
from pretrain.io import atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest"
WEIGHTS = "model.pt"
RANK_STATE = "rank_state"
WEIGHTS_CONFIG = "model_config.json"
HASHES = "xxh3_64"
"""Manifest key of the per-file content hashes (manifests written before it have sizes only)."""
READERS = ".readers"
"""In a checkpoint: the lock file readers (detached jobs) hold shared so that pruning skips the checkpoint."""
UNIVERSAL_SOURCE = "source_manifest.xxh3"
"""In `<tag>.universal/`: the hash of the manifest it was converted from (a step saved again is converted again)."""
_VERIFIED: set[tuple[str, int]] = set()
"""Manifests (path, mtime) whose files this process has hashed already: resume verifies a checkpoint
several times (the pre-launch check, the choice of checkpoint, the load), the bytes are read once."""
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, partial or inconsistent; the message names the file."""


def tag_for(step: int) -> str:
    return f"step_{step}"


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
        m = _STEP_DIR.match(d.name)
        if m and (d / MANIFEST).is_file():
            found.append((int(m.group(1)), d))
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
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist; give a checkpoints/ root, its latest file, a "
            "checkpoints/step_<N> folder or a weights folder")
    if (path / LATEST).is_file() and not (path / WEIGHTS).is_file():
        return latest(path)
    return path


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


def to_universal(ckpt: Path) -> Path:
    """DeepSpeed's universal (world-size independent) form of a checkpoint, converted once on this process.

    Written next to the checkpoint as `<tag>.universal` via a temp folder and a rename, so a crash leaves
    nothing half-converted; the original is not touched."""
    out = universal_dir(ckpt)
    source = file_hash(ckpt / MANIFEST)  # keys the conversion to this save of the step, not to its name
    if (out / "zero").is_dir() and (out / UNIVERSAL_SOURCE).is_file() and (out / UNIVERSAL_SOURCE).read_text() == source:
        return out
    if out.exists():
        log.warning("%s was converted from an earlier save of %s; converting again", out, ckpt.name)
        shutil.rmtree(out)
    import subprocess
    import sys

    tmp = ckpt.with_name(f".{ckpt.name}.universal.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(ckpt),
           "--output_folder", str(tmp), "--inject_missing_state", "--num_extract_workers", "1",
           "--num_merge_workers", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckpointError(f"converting {ckpt} to a universal checkpoint failed:\n{proc.stderr[-3000:]}")
    for name in ("mp_rank_00_model_states.pt", "rng"):  # what our loader reads beside DeepSpeed's state
        src = ckpt / name
        if src.is_dir():
            shutil.copytree(src, tmp / name, dirs_exist_ok=True)
        elif src.is_file() and not (tmp / name).exists():
            shutil.copy(src, tmp / name)
    (tmp / UNIVERSAL_SOURCE).write_text(source)
    tmp.rename(out)
    return out


def universal_dir(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".universal")


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


def consolidated_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a training checkpoint (any ZeRO stage), on CPU, on one process."""
    verify(ckpt)
    if any(ckpt.glob("bf16_zero_pp_rank_*_optim_states.pt")):
        sd = _consolidate_bf16_optimizer(ckpt)
    elif any(ckpt.glob("*zero_pp_rank_*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
        # ZeRO-1 keeps no record of frozen parameters (norm-only mode) beside the optimizer's: their module
        # copy, stored whole at stage 1/2, is the value (ZeRO-3's are merged by zero_to_fp32 itself)
        if (ckpt / "mp_rank_00_model_states.pt").is_file():
            module = torch.load(ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]
            sd.update({name: weight for name, weight in module.items() if name not in sd and weight.numel() > 0})
    else:  # ZeRO-0: the module state is stored whole
        sd = torch.load(ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]
    return {k: v.detach().float() for k, v in sd.items()}


def _consolidate_bf16_optimizer(ckpt: Path) -> dict[str, torch.Tensor]:
    """fp32 masters from DeepSpeed's BF16_Optimizer files (bf16 + ZeRO-1 with fp32 gradient accumulation),
    which zero_to_fp32 does not read: each rank holds one equal slice of every flat parameter group, laid out
    in the order of the model file's `param_shapes`."""
    model_states = torch.load(ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
    files = sorted(ckpt.glob("bf16_zero_pp_rank_*_optim_states.pt"), key=lambda p: int(p.name.split("_")[4]))
    with torch.serialization.safe_globals(pickles.deepspeed_classes()):
        partitions = [torch.load(f, map_location="cpu", weights_only=True)["optimizer_state_dict"]
                      ["single_partition_of_fp32_groups"] for f in files]
    sd: dict[str, torch.Tensor] = {}
    for i, shapes in enumerate(model_states["param_shapes"]):
        flat = torch.cat([rank_groups[i] for rank_groups in partitions])
        offset = 0
        for name, shape in shapes.items():
            numel = int(torch.Size(shape).numel())
            sd[name] = flat[offset:offset + numel].view(shape).clone()
            offset += numel
    shared = model_states.get("shared_params") or {}
    for name, weight in model_states["module"].items():
        if name not in sd and name not in shared:  # frozen: no master exists, the module copy is the value
            sd[name] = weight.float()
    for name, source in shared.items():
        sd[name] = sd[source]
    return sd


def model_config_of(ckpt: Path) -> ModelConfig:
    """The model shape a checkpoint or weights folder was saved with."""
    if (ckpt / WEIGHTS_CONFIG).is_file():
        return ModelConfig(**json.loads((ckpt / WEIGHTS_CONFIG).read_text()))
    from omegaconf import OmegaConf

    if not (ckpt / "config.yaml").is_file():
        raise CheckpointError(f"{ckpt} has neither {WEIGHTS_CONFIG} nor config.yaml: cannot tell the model shape")
    return ModelConfig(**OmegaConf.to_container(OmegaConf.load(ckpt / "config.yaml").model))


def load_weights(path: Path, lazy: bool = False) -> tuple[ModelConfig, Mapping[str, torch.Tensor]]:
    """(config, fp32 state dict) from a weights folder (growth output), a training checkpoint or a
    transformers Llama folder. `lazy`: an HF folder's tensors are read only when looked up (model.hf.HFWeights),
    so a partitioned model can be filled one parameter at a time."""
    from model.hf import HFWeights, UnsupportedModel, load_hf_folder, read_hf_config  # transformers: only here

    path = locate(path)
    if (path / "config.json").is_file() and not (path / MANIFEST).is_file():
        try:
            return (read_hf_config(path), HFWeights(path)) if lazy else load_hf_folder(path)
        except UnsupportedModel as err:
            raise CheckpointError(str(err)) from None
    if (path / WEIGHTS).is_file():
        return model_config_of(path), torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    if not (path / MANIFEST).is_file():
        raise CheckpointError(
            f"{path} is neither a weights folder ({WEIGHTS} + {WEIGHTS_CONFIG}), a complete checkpoint "
            f"({MANIFEST}) nor a transformers model folder (config.json + safetensors)"
        )
    return model_config_of(path), consolidated_state_dict(path)


def save_weights(out: Path, cfg: ModelConfig, state_dict: dict[str, torch.Tensor], record: dict | None = None) -> None:
    """Write a portable weights folder atomically (temp dir + rename); refuses to overwrite one."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} exists and is not empty; choose a new output folder")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, tmp / WEIGHTS)
    (tmp / WEIGHTS_CONFIG).write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    if record is not None:
        (tmp / "record.json").write_text(json.dumps(record, indent=2, default=str))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
