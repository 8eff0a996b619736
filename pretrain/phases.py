"""The trainable phases of a run (`train.trainable`): all parameters, then, from step t0 in the hybrid mode,
only a subset (the scalar norm weights, or a random subset of the same size).

Each phase trains through its own DeepSpeed engine, built here; `hand_over`/`take_over` rebuild the engine over the subset
right after step t0, carrying the fp32 weights, the lr schedule and (ZeRO-1/2) the subset's Adam moments.
The arithmetic of subsets and masks is pretrain/hybrid.py's.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, NamedTuple

from model import Llama
from model.quant import quantize_model
from pretrain import dist, hybrid, optimizer_state
from pretrain.engine import build_engine

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pretrain.config import Config

log = logging.getLogger("growlm")


class Handover(NamedTuple):
    subset: hybrid.Subset
    weights: dict[str, "torch.Tensor"]
    moments: Any  # optimizer_state.carry_moments: None where the optimizer's partitions cannot carry them


class TrainablePhases:
    """Builds the engine for the phase a step is in; `origin_step` is where the run's lr schedule starts."""

    def __init__(self, cfg: "Config", origin_step: int = 0):
        self.cfg, self.origin_step = cfg, origin_step
        self.trainable = cfg.train.trainable

    def subset_phase(self, step: int) -> bool:
        """True once the hybrid mode's t0 is reached (the switch happens right after step t0)."""
        return self.trainable.mode != "all" and step >= self.trainable.after_step

    def build(self, model: "nn.Module", start_step: int, subset: hybrid.Subset | None = None) -> tuple:
        """(engine, optimizer, scheduler) for the phase `start_step` is in: all parameters, or the trainable
        subset (the one given, which the caller drew already, or drawn here)."""
        cfg, subset_only = self.cfg, self.subset_phase(start_step)
        if not subset_only:
            subset = None
        elif subset is None:
            subset = hybrid.subset_of(model, self.trainable, cfg.run.seed)
        if subset is not None:
            hybrid.freeze_all_but(model, subset.names)
            if subset.masks:  # the unchosen elements of a trainable tensor must not decay either
                cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, weight_decay=0.0))
        lr_offset = self.trainable.after_step if subset_only else self.origin_step
        parts = build_engine(model, cfg, lr_offset)
        if subset is not None and subset.masks:
            hybrid.mask_gradients(parts[0].module, subset.masks)
        dist.set_collective_timeout(self.cfg.deepspeed.collective_timeout_s)  # the engine made new groups
        return parts

    def hand_over(self, engine: Any) -> Handover:
        """What the subset engine carries from the all-parameter `engine`; the caller then drops that engine
        (both at once would double the memory) and calls `take_over`."""
        subset = hybrid.subset_of(engine.module, self.trainable, self.cfg.run.seed)
        weights = hybrid.full_weights(engine)
        moments = optimizer_state.carry_moments(engine, subset.names)
        if moments is not None and subset.masks:
            moments = hybrid.mask_moments(moments, subset.masks)
        return Handover(subset, weights, moments)

    def take_over(self, handover: Handover, step: int) -> tuple[tuple, dict[str, int]]:
        """((engine, optimizer, scheduler) over the subset from `step` on, the record's hybrid/* counts)."""
        subset, weights = handover.subset, handover.weights
        model = Llama(self.cfg.model)
        quantize_model(model, self.cfg.train.quantization)
        model.load_state_dict(weights, strict=False)  # named_parameters() lists a tied head only once
        parts = self.build(model, step, subset)
        hybrid.restore_masters(parts[0], weights)
        if handover.moments is not None:
            optimizer_state.restore_moments(parts[0], handover.moments)
        n_train = subset.size(weights)
        log.info("step %d: training only %d parameters (%s) from now on, Adam moments %s", step, n_train,
                 self.trainable.mode, "carried" if handover.moments is not None else "restarted")
        return parts, {"hybrid/trainable_params": n_train,
                       "hybrid/frozen_params": sum(w.numel() for w in weights.values()) - n_train}
