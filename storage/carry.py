"""What a grown folder carries besides its weights, so that a run started from it continues the source's training
instead of restarting it (`train.carry` in the run config reads it):

- the Adam moments of the source checkpoint, read from DeepSpeed's universal form (any ZeRO stage, any world
  size) and mapped through the growth operator like the weights (operators/moments.py);
- the optimizer's step count (Adam's bias correction goes on from there);
- the source's training step, tokens and sampler position, so the lr schedule and the data order can go on
  where the source stopped.

Stored as `carry.pt` (tensors and plain values only: loadable with `weights_only=True`) in the grown folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from storage import pickles
from storage.folders import CheckpointError
from storage.universal import to_universal

CARRY_FILE = "carry.pt"
OptState = dict[str, dict[str, torch.Tensor]]
"""Parameter name -> per-parameter optimizer tensors as full fp32 tensors ({"exp_avg": T, "exp_avg_sq": T});
growth operators map them like the weights (growth/operators/moments.py)."""
MOMENTS = ("exp_avg", "exp_avg_sq")


def source_optimizer(ckpt: Path) -> tuple[OptState, int]:
    """The full fp32 Adam moments of every optimized parameter of checkpoint `ckpt`, and the optimizer's step
    count. A tied head is optimized as its embedding and a frozen parameter not at all: both have no moments."""
    folder = to_universal(Path(ckpt)) / "zero"
    pickles.check_folder(folder)
    moments: OptState = {}
    steps = set()
    for where in sorted(p for p in folder.iterdir() if (p / "exp_avg.pt").is_file()):
        moments[where.name] = {key: _param(where / f"{key}.pt") for key in MOMENTS}
        steps.add(int(torch.load(where / "step.pt", map_location="cpu", weights_only=True)))
    if len(steps) != 1:
        raise CheckpointError(f"{ckpt}: expected one optimizer step count over its parameters, found {sorted(steps)}")
    return moments, steps.pop()


def _param(path: Path) -> torch.Tensor:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return (saved["param"] if isinstance(saved, dict) else saved).float()


def source_progress(ckpt: Path) -> dict[str, Any]:
    """The source run's step, tokens and sampler state, from its checkpoint's client state."""
    states = torch.load(Path(ckpt) / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
    return {key: states[key] for key in ("step", "tokens", "sampler")}


def save_carry(folder: Path, opt_state: OptState, optimizer_step: int, progress: dict[str, Any]) -> None:
    """Write carry.pt into a folder being assembled (growth writes it before the folder is renamed into place)."""
    moments = {name: {k: v.detach().float().contiguous() for k, v in entries.items() if k in MOMENTS}
               for name, entries in opt_state.items()}
    torch.save({"moments": moments, "optimizer_step": int(optimizer_step), **progress}, Path(folder) / CARRY_FILE)


def check_carry(folder: Path) -> Path:
    """carry.pt's path in a grown folder; a clear error when the folder was grown without --carry."""
    path = Path(folder) / CARRY_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} carries no optimizer state ({CARRY_FILE}); grow it with --carry, or set "
                              "train.carry.optimizer=false and train.carry.schedule=rewarm")
    return path


def load_carry(folder: Path) -> dict[str, Any]:
    """carry.pt of a grown folder (check_carry's error when it has none)."""
    return torch.load(check_carry(folder), map_location="cpu", weights_only=True)
