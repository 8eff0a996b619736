"""A run that starts from another model's weights (`train.init_from`) and, from a grown folder, goes on with
what the folder carries (`train.carry`): the source's step, tokens and data position, and its Adam moments.

The file format (`carry.pt`) is storage/carry.py's; this module applies it to a starting run.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pretrain import optimizer_state
from pretrain.config import ConfigError
from pretrain.engine import load_weights_into
from storage.carry import check_carry, load_carry
from storage.weights import load_weights, weights_config

if TYPE_CHECKING:
    from torch import nn

    from pretrain.config import Config

log = logging.getLogger("growlm")


def init_from(model: "nn.Module", cfg: "Config") -> None:
    """Load train.init_from's weights into `model` (collective under ZeRO-3)."""
    if not cfg.train.init_from:
        return
    source = Path(cfg.train.init_from)
    src_cfg, state = load_weights(source, lazy=True)
    _check_shape(cfg, source, src_cfg)
    load_weights_into(model, state)
    log.info("initialized weights from %s", source)


def carried_state(cfg: "Config") -> dict[str, Any] | None:
    """What train.init_from's folder carries (storage/carry.py's carry.pt) when train.carry takes any of it,
    else None."""
    return load_carry(Path(cfg.train.init_from)) if cfg.train.init_from and _takes_carry(cfg) else None


def check_init_from(cfg: "Config") -> None:
    """What `init_from` will read, checked before any rank starts and without reading a tensor: the source
    exists and is a weights, checkpoint or transformers folder of the run's model shape, and holds carry.pt
    when train.carry takes any of it."""
    if not cfg.train.init_from:
        return
    source = Path(cfg.train.init_from)
    _check_shape(cfg, source, weights_config(source))
    if _takes_carry(cfg):
        check_carry(source)


def _check_shape(cfg: "Config", source: Path, src_cfg: Any) -> None:
    """The source's shape is the run's; else an error naming the fields that differ (not two whole configs)."""
    if src_cfg != cfg.model:
        ours, theirs = dataclasses.asdict(cfg.model), dataclasses.asdict(src_cfg)
        differ = "; ".join(f"model.{k}: source {theirs[k]!r}, config {ours[k]!r}" for k in ours if ours[k] != theirs[k])
        raise ConfigError(f"train.init_from={source} holds a model of another shape ({differ}); set those model "
                          "keys to the source's, or grow it first (python -m growth grow)")


def _takes_carry(cfg: "Config") -> bool:
    return cfg.train.carry.optimizer or cfg.train.carry.schedule == "continue"


def origin_step(cfg: "Config", carried: dict[str, Any] | None) -> int:
    """The step this run's own training starts at: the source's with train.carry.schedule=continue, else 0.
    Its scheduler counts from there, on a resume too."""
    if carried is not None and cfg.train.carry.schedule == "continue":
        return int(carried["step"])
    return 0


def take_over(cfg: "Config", carried: dict[str, Any], engine: Any, sampler: Any) -> tuple[int, int]:
    """A fresh start from a grown folder: (step, tokens) to go on from, with the sampler moved to the source's
    data position and the mapped Adam moments loaded into `engine`, as train.carry asks. Collective."""
    carry, step, tokens = cfg.train.carry, 0, 0
    if carry.schedule == "continue":
        if cfg.train.steps <= carried["step"]:
            raise ConfigError(f"train.steps={cfg.train.steps} but train.carry.schedule=continue starts at the "
                              f"source's step {carried['step']}: train.steps counts from the source run's start, "
                              "so raise it")
        step, tokens = int(carried["step"]), int(carried["tokens"])
        sampler.load_state_dict(carried["sampler"])
    if carry.optimizer:
        optimizer_state.restore_moments(engine, (carried["moments"], int(carried["optimizer_step"])))
    log.info("continuing %s: step %d, Adam moments %s", cfg.train.init_from, step,
             f"carried (optimizer step {carried['optimizer_step']})" if carry.optimizer else "fresh")
    return step, tokens
