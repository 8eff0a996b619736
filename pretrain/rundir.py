"""A run's directory as the trainer writes it: its lock, the files written before training (config.yaml, the
tokenizer), and checkpoints that carry those files and the run's metadata (which checkpoint a run resumes from
is pretrain/startup.py's decision).

Layout (docs/design.md, "Run directory"): `<run>/config.yaml`, `<run>/<tokenizer files>`,
`<run>/checkpoints/step_<N>/` and `<run>/checkpoints/latest`; the file formats are pretrain/checkpoint.py's.
"""
from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from pretrain import checkpoint, compat, dist, runlock
from pretrain.async_save import AsyncSaves
from pretrain.checkpoint import RANK_STATE
from pretrain.config import save_config
from storage.io import atomic_write_bytes
from storage.tokenizer_files import tokenizer_files

__all__ = ["RANK_STATE", "RunDir", "lock"]

if TYPE_CHECKING:
    from pretrain.config import Config
    from pretrain.startup import ResumePoint


def lock(run_dir: Path, is_main: bool) -> IO | None:
    """One run per run directory (pretrain/runlock.py): rank 0 takes the lock before anything is written, and
    every rank learns the outcome (a collective), so a refused run stops on all ranks instead of leaving the
    others at a barrier. Rank 0 gets the open lock file (keep it for the run), the others None."""
    held, refusal = None, None
    if is_main:
        try:
            held = runlock.acquire(run_dir)
        except runlock.RunDirInUse as err:
            refusal = err
    if dist.all_reduce_sum(torch.tensor([0.0 if refusal is None else 1.0])).item() > 0:
        raise refusal or runlock.RunDirInUse(f"run directory {run_dir} is in use (see rank 0)")
    return held


class RunDir:
    """One run's directory, for a run of `world` ranks training with the tokenizer at `tokenizer_path`."""

    def __init__(self, cfg: "Config", tokenizer_path: Path, world: int, is_main: bool):
        self.cfg, self.tokenizer_path, self.world, self.is_main = cfg, Path(tokenizer_path), world, is_main
        self.root = cfg.run_dir
        self.checkpoints = self.root / "checkpoints"
        keep = cfg.checkpoint.keep
        self.saves = AsyncSaves(self.checkpoints, keep, cfg.deepspeed.collective_timeout_s) \
            if cfg.checkpoint.async_save else checkpoint.Saves(self.checkpoints, keep)

    def write_run_files(self) -> None:
        """config.yaml and the tokenizer files (checkpoints copy them from here); rank 0, once the run is known
        to go ahead, so a refused resume leaves the run as it was."""
        if not self.is_main:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.root / "config.yaml")
        for name, file in tokenizer_files(self.tokenizer_path).items():
            atomic_write_bytes(self.root / name, file.read_bytes())

    def load(self, engine: Any, point: "ResumePoint") -> dict[str, Any]:
        """Load `point` into `engine` (collective; through the universal form when it was saved by another
        number of ranks) and return its client state, with this rank's streaming state under RANK_STATE."""
        saved_world = point.meta.get("world_size", self.world)
        return checkpoint.load(engine, point.checkpoint, universal=saved_world != self.world)

    def save(self, engine: Any, step: int, client: dict[str, Any], rank_state: dict | None) -> None:
        """A checkpoint of `step` with the run's config and tokenizer files (collective): complete on return,
        or (checkpoint.async_save) once `self.saves.completed()` returns it."""
        extra = {"config.yaml": self.root / "config.yaml"}
        extra |= {name: self.root / name for name in tokenizer_files(self.tokenizer_path)}
        self.saves.save(engine, step, client, extra, self._meta(), rank_state)

    def _meta(self) -> dict[str, Any]:
        return compat.run_meta(self.cfg, self.tokenizer_path, self.world)
