"""A run's directory as the trainer writes it: its lock, the checkpoint it resumes from, the files written
before training (config.yaml, the tokenizer), and checkpoints that carry those files and the run's metadata.

Layout (docs/design.md, "Run directory"): `<run>/config.yaml`, `<run>/<tokenizer files>`,
`<run>/checkpoints/step_<N>/` and `<run>/checkpoints/latest`; the file formats are pretrain/checkpoint.py's.
"""
from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import torch

from pretrain import checkpoint, compat, dist, runlock
from pretrain.async_save import AsyncSaves
from pretrain.checkpoint import RANK_STATE
from pretrain.config import ConfigError, save_config
from storage import folders, retention, run_files
from storage.io import atomic_write_bytes
from storage.tokenizer_files import tokenizer_files

__all__ = ["RANK_STATE", "ResumePoint", "RunDir", "lock", "resume_candidate"]

if TYPE_CHECKING:
    from pretrain.config import Config


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


class ResumePoint(NamedTuple):
    """A checkpoint to load, with its verified manifest (files, sizes and hashes checked once)."""

    checkpoint: Path
    manifest: dict[str, Any]

    @classmethod
    def verified(cls, checkpoint: Path) -> "ResumePoint":
        return cls(checkpoint, folders.verify(checkpoint))

    @property
    def step(self) -> int:
        return int(self.manifest["step"])

    @property
    def meta(self) -> dict[str, Any]:
        """What the run that saved it recorded (pretrain/compat.py's run_meta)."""
        return self.manifest.get("meta", {})


def resume_candidate(cfg: "Config") -> ResumePoint | None:
    """The checkpoint train.resume names, verified (`auto`: the latest complete one, or with checkpoint.fallback
    the newest that verifies; a named one, in any of the three forms (`checkpoints/`, `checkpoints/latest`,
    `checkpoints/step_N`): that one, refused naming what is wrong with it), or None for a fresh start. A run
    directory has one history: a start that would overwrite part of the run already there is refused."""
    if cfg.train.resume == "auto":
        ckpt = retention.resumable(cfg.run_dir / "checkpoints", cfg.checkpoint.fallback)
    else:
        ckpt = None if cfg.train.resume == "never" else folders.locate(Path(cfg.train.resume))
        refuse_a_second_history(cfg, ckpt)
    return ResumePoint.verified(ckpt) if ckpt is not None else None


def refuse_a_second_history(cfg: "Config", named: Path | None) -> None:
    """Starting over (`named` None: `train.resume=never`) in a folder that holds a run, or resuming there from a
    checkpoint other than its latest, would prune the run's checkpoints, rewind its metrics and move `latest`: part
    of its history gone. Refused before anything is written, naming the folder and the fix (another run.name)."""
    held = sorted(p.name for p in (cfg.run_dir / "checkpoints").glob("step_*"))
    if not held and not (cfg.run_dir / run_files.METRICS).is_file():
        return
    what = f"checkpoints {', '.join(held)}" if held else run_files.METRICS
    if named is None:
        raise ConfigError(f"train.resume=never: {cfg.run_dir} holds a run ({what}) that starting over would "
                          f"overwrite; give the new run a run directory of its own (another run.name), or move "
                          f"{cfg.run_dir} aside first")
    pointer = cfg.run_dir / "checkpoints" / folders.LATEST
    latest = pointer.read_text().strip() if pointer.is_file() else None
    if latest is None or named.resolve() != (pointer.parent / latest).resolve():
        raise ConfigError(f"train.resume={cfg.train.resume}: {cfg.run_dir} holds a run ({what}, latest "
                          f"{latest or 'none'}), and training there from another checkpoint would "
                          "rewrite its history after it; start the branch in a run directory of its own (another "
                          "run.name, as a WSD branch does)")


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

    def load(self, engine: Any, point: ResumePoint) -> dict[str, Any]:
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
