"""The start of a run, decided once: the concrete precision, the checkpoint it resumes from (chosen and verified
once), the global batch a resume on another number of ranks keeps, the source it starts from, and its data.

`python -m pretrain --check` runs `decide` before any rank starts, so every refusal happens there first; each
rank runs it again as the trainer's first step and builds from the `Start` it returns. The config in a `Start`
is final: nothing rewrites it afterwards (docs/design.md, "The trainer").
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from pretrain import carry, compat, dist, precision
from pretrain.config import ConfigError
from pretrain.data.pipeline import load_data
from pretrain.objective import refuse_unsupported_attention
from storage import folders, retention, run_files

if TYPE_CHECKING:
    from pretrain.config import Config
    from pretrain.data.dataset import PackedData

log = logging.getLogger("growlm")


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


@dataclass(frozen=True)
class Start:
    """What a run starts from."""

    cfg: "Config"
    """The final config: train.precision concrete, train.grad_accum kept for a resize."""
    resume: ResumePoint | None
    """The checkpoint train.resume names, verified and compatible with `cfg`; None: a fresh start."""
    data: "PackedData"
    carried: dict[str, Any] | None
    """What a start from a grown folder takes over (train.carry); None without, and in `--check`."""
    origin_step: int
    """Where the run's own lr schedule starts: the source's step with train.carry.schedule=continue, else 0."""


def decide(cfg: "Config", device: torch.device, world: int | None) -> Start:
    """The start of `cfg`'s run on `world` ranks (None: before the ranks exist, in `--check`): cheap checks first,
    so no data is prepared for a run that cannot start; then the data, and the resume checked against it."""
    resume = resume_candidate(cfg)
    if world is not None:
        cfg = keep_global_batch(cfg, world, resume)  # before anything reads train.grad_accum
    cfg, choice = precision.resolve(cfg, device)  # before config.yaml and the resume check see it
    if dist.is_main():
        precision.report(choice, device)
    refuse_unsupported_attention(cfg, device)
    carry.check_init_from(cfg)  # without reading a tensor
    carried = carry.carried_state(cfg) if world is not None else None
    origin_step = carry.origin_step(cfg, carried)
    data = load_data(cfg)
    if resume is not None:
        found = compat.problems(resume.meta, compat.run_meta(cfg, data.tokenizer_path, world))
        if found:
            raise ConfigError(f"cannot resume from {resume.checkpoint}: " + "; ".join(found))
    return Start(cfg, resume, data, carried, origin_step)


def keep_global_batch(cfg: "Config", world: int, resume: ResumePoint | None) -> "Config":
    """The config a resume on another number of ranks continues with: train.grad_accum derived so the global
    batch stays the checkpoint's (as Megatron and torchtitan fix the global batch and derive accumulation),
    logged; the data order and the step count then continue exactly. Refused, naming the micro-batch sizes
    that would work, when no grad_accum gives that batch. The same number of ranks changes nothing: a changed
    batch there is the user's choice, which `compat.problems` refuses."""
    meta = resume.meta if resume is not None else {}
    saved_world, saved_batch = meta.get("world_size"), meta.get("sample_sequence", {}).get(compat.GLOBAL_BATCH)
    micro = cfg.train.micro_batch_size
    if saved_world in (None, world) or saved_batch is None or saved_batch == micro * cfg.train.grad_accum * world:
        return cfg
    ckpt = resume.checkpoint
    if saved_batch % (micro * world):
        fits = [m for m in range(1, saved_batch // world + 1) if saved_batch % (m * world) == 0]
        raise ConfigError(f"cannot resume from {ckpt} on {world} ranks: its global batch of {saved_batch} (saved on "
                          f"{saved_world} ranks) is not train.micro_batch_size={micro} x {world} ranks x a whole "
                          f"train.grad_accum; use train.micro_batch_size in {fits} (grad_accum follows), or "
                          f"{saved_world} ranks")
    accum = saved_batch // (micro * world)
    log.warning("resuming %s (saved on %d ranks) on %d ranks: train.grad_accum %d -> %d keeps its global batch of %d",
                ckpt, saved_world, world, cfg.train.grad_accum, accum, saved_batch)
    return replace(cfg, train=replace(cfg.train, grad_accum=accum))
