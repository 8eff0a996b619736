"""DeepSpeed's universal checkpoint form: one folder per parameter with its full fp32 value and Adam moments,
independent of world size and ZeRO stage. A resume on another world size loads through it, and growth reads a
checkpoint's optimizer state from it (growth.carry)."""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

from storage.folders import MANIFEST, CheckpointError, file_hash

log = logging.getLogger(__name__)

UNIVERSAL_SOURCE = "source_manifest.xxh3"
"""In `<tag>.universal/`: the hash of the manifest it was converted from (a step saved again is converted again)."""


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
