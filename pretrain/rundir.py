"""A run's directory as the trainer writes it: its lock, the files written before training (config.yaml, the
tokenizer), and checkpoints that carry those files and the run's metadata (which checkpoint a run resumes from
is pretrain/startup.py's decision).

Layout (docs/design.md, "Run directory"): `<run>/config.yaml`, `<run>/<tokenizer files>`,
`<run>/checkpoints/step_<N>/` and `<run>/checkpoints/latest`; the file formats are pretrain/checkpoint.py's.
"""
from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import torch

from pretrain import checkpoint, compat, dist, runlock
from pretrain.async_save import AsyncSaves
from pretrain.checkpoint import RANK_STATE
from pretrain.config import save_config
from storage.io import atomic_write_bytes
from storage.tokenizer_files import tokenizer_files

__all__ = ["RANK_STATE", "RunDir", "Stateful", "TOP_LEVEL", "lock"]

TOP_LEVEL = ""
"""The key of the part whose entries sit at the top of a checkpoint's client state (the trainer's step and tokens,
which storage/carry.py and the lm-eval job read there)."""


class Stateful(Protocol):
    """A part of a run whose state a checkpoint holds beside DeepSpeed's (as torchtitan's Stateful): the data
    sampler, the callbacks, the trainer's progress. A part with a `rank_state()` also keeps a state per rank
    (a token stream's position), handed back as `load_state_dict(state, rank_state)`."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

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
        self.parts: dict[str, Stateful] = {}

    def track(self, key: str, part: Stateful) -> None:
        """Keep `part`'s state under `key` in every checkpoint and hand it back on a resume (TOP_LEVEL: its
        entries at the top of the client state)."""
        if key in self.parts:
            raise ValueError(f"checkpoint part {key!r} is already tracked ({type(self.parts[key]).__name__})")
        self.parts[key] = part

    def write_run_files(self) -> None:
        """config.yaml and the tokenizer files (checkpoints copy them from here); rank 0, once the run is known
        to go ahead, so a refused resume leaves the run as it was."""
        if not self.is_main:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.root / "config.yaml")
        for name, file in tokenizer_files(self.tokenizer_path).items():
            atomic_write_bytes(self.root / name, file.read_bytes())

    def load(self, engine: Any, point: "ResumePoint") -> None:
        """Load `point` into `engine` (collective; through the universal form when it was saved by another
        number of ranks) and hand every tracked part its state."""
        saved_world = point.meta.get("world_size", self.world)
        client = checkpoint.load(engine, point.checkpoint, universal=saved_world != self.world)
        for key, part in self.parts.items():
            state = client if key == TOP_LEVEL else client.get(key, {})
            if hasattr(part, "rank_state"):
                part.load_state_dict(state, client.get(RANK_STATE))
            else:
                part.load_state_dict(state)

    def save(self, engine: Any, step: int) -> None:
        """A checkpoint of `step` with every tracked part's state and the run's config and tokenizer files
        (collective): complete on return, or (checkpoint.async_save) once `self.saves.completed()` returns it."""
        client: dict[str, Any] = {}
        for key, part in self.parts.items():
            state = part.state_dict()
            if key == TOP_LEVEL:
                client.update(state)
            else:
                client[key] = state
        rank_states = [part.rank_state() for part in self.parts.values() if hasattr(part, "rank_state")]
        extra = {"config.yaml": self.root / "config.yaml"}
        extra |= {name: self.root / name for name in tokenizer_files(self.tokenizer_path)}
        self.saves.save(engine, step, client, extra, self._meta(), rank_states[0] if rank_states else None)

    def _meta(self) -> dict[str, Any]:
        return compat.run_meta(self.cfg, self.tokenizer_path, self.world)
