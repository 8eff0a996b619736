"""The start of a run, decided once: the concrete precision, the checkpoint it resumes from (chosen and verified
once), the global batch a resume on another number of ranks keeps, the source it starts from, and its data.

`python -m pretrain --check` runs `decide` before any rank starts, so every refusal happens there first; each
rank runs it again as the trainer's first step and builds from the `Start` it returns. The config in a `Start`
is final: nothing rewrites it afterwards (docs/design.md, "The trainer").
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from pretrain import compat, dist, precision
from pretrain.carry import check_init_from
from pretrain.config import ConfigError
from pretrain.data.pipeline import load_data
from pretrain.rundir import ResumePoint, resume_candidate

if TYPE_CHECKING:
    from pretrain.config import Config
    from pretrain.data.dataset import PackedData

log = logging.getLogger("growlm")


@dataclass(frozen=True)
class Start:
    """What a run starts from."""

    cfg: "Config"
    """The final config: train.precision concrete, train.grad_accum kept for a resize."""
    resume: ResumePoint | None
    """The checkpoint train.resume names, verified and compatible with `cfg`; None: a fresh start."""
    data: "PackedData"


def decide(cfg: "Config", device: torch.device, world: int | None) -> Start:
    """The start of `cfg`'s run on `world` ranks (None: before the ranks exist, in `--check`): cheap checks first,
    so no data is prepared for a run that cannot start; then the data, and the resume checked against it."""
    cfg, choice = precision.resolve(cfg, device)  # before config.yaml and the resume check see it
    if dist.is_main():
        precision.report(choice, device)
    check_init_from(cfg)
    resume = resume_candidate(cfg)
    if world is not None:
        cfg = keep_global_batch(cfg, world, resume)  # before anything reads train.grad_accum
    data = load_data(cfg)
    if resume is not None:
        found = compat.problems(resume.meta, compat.run_meta(cfg, data.tokenizer_path, world))
        if found:
            raise ConfigError(f"cannot resume from {resume.checkpoint}: " + "; ".join(found))
    return Start(cfg, resume, data)


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
