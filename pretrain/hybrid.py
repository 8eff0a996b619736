"""Norm-only hybrid training (docs/methods.md §4): after step t0 only the RMSNorm gains (and chosen groups) train.
Its control, mode `random`, trains as many individual weights drawn at random from the other parameters: whole
tensors stay trainable and a gradient hook zeroes the unchosen elements, which then never move (no weight decay
in that phase, and their carried moments are zeroed).

DeepSpeed builds its flat optimizer partitions from the parameters that require grad when the engine is
created, so freezing mid-run means a new engine over the trainable subset: the frozen parameters' fp32
masters and Adam moments are dropped (memory falls, and the clipped gradient norm is the subset's own);
the trainable ones keep their exact fp32 masters, and the lr schedule continues where it was.
Under ZeRO-1/2 the trainable ones also keep their Adam moments and step count (`optimizer_state.carry_moments`
and `restore_moments`); under ZeRO-0 and ZeRO-3 the moments restart at t0.
Every function that touches the engine is collective: all ranks call it in the same order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param
from torch import nn

from pretrain.config import TrainableConfig

NORM = re.compile(r"(^|\.)(attention_norm|ffn_norm|norm)\.weight$")


def trainable_names(model: nn.Module, cfg: TrainableConfig) -> set[str]:
    """Names of the parameters that train in the subset phase."""
    extra = [re.compile(g) for g in cfg.groups]
    return {n for n, _ in model.named_parameters() if NORM.search(n) or any(p.search(n) for p in extra)}


@dataclass
class Subset:
    """What trains after t0: the parameters left requiring grad and, for `random`, which of their elements move."""

    names: set[str]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    """name -> boolean mask of the elements that train; empty when whole tensors train."""

    def size(self, weights: dict[str, torch.Tensor]) -> int:
        """How many numbers train, given every parameter's full value (`full_weights`)."""
        if self.masks:
            return sum(int(m.sum()) for m in self.masks.values())
        return sum(weights[n].numel() for n in self.names)


def subset_of(model: nn.Module, cfg: TrainableConfig, seed: int) -> Subset:
    """The subset phase's trainable set for `cfg.mode` (norms_only or random)."""
    norms = trainable_names(model, cfg)
    if cfg.mode != "random":
        return Subset(norms)
    count = sum(p.numel() for n, p in model.named_parameters() if n in norms)
    masks = random_masks(model, count, exclude=norms, seed=seed)
    return Subset(set(masks), masks)


def random_masks(model: nn.Module, count: int, exclude: set[str], seed: int) -> dict[str, torch.Tensor]:
    """`count` distinct elements drawn uniformly from every parameter not in `exclude`, as boolean masks by name.
    Drawn in rounds of `count` with replacement (deduplicated), so no permutation of the whole model is built."""
    shapes = {n: p.shape for n, p in model.named_parameters() if n not in exclude}
    total = sum(s.numel() for s in shapes.values())
    if not 0 < count <= total:
        raise ValueError(f"cannot draw {count} of the {total} elements outside {sorted(exclude)}")
    gen = torch.Generator().manual_seed(seed)
    picked = torch.empty(0, dtype=torch.long)
    while picked.numel() < count:
        picked = torch.cat([picked, torch.randint(total, (count,), generator=gen)]).unique()
    picked = picked[torch.randperm(picked.numel(), generator=gen)[:count]]
    flat = torch.zeros(total, dtype=torch.bool)
    flat[picked] = True
    masks, start = {}, 0
    for n, shape in shapes.items():
        masks[n] = flat[start:start + shape.numel()].view(shape)
        start += shape.numel()
    return masks


def mask_gradients(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the gradient of every unmasked element as autograd produces it (before DeepSpeed reduces it)."""
    for n, p in model.named_parameters():
        if n in masks:
            keep = masks[n].to(p.device)
            p.register_hook(lambda grad, keep=keep: grad.masked_fill(~keep, 0))


def mask_moments(carried: tuple[dict[str, dict[str, torch.Tensor]], int],
                 masks: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
    """Carried moments with the unmasked elements' zeroed: zero moments and a zero gradient make a zero update."""
    moments, step = carried
    return {n: {k: v.masked_fill(~masks[n], 0) if n in masks else v for k, v in m.items()}
            for n, m in moments.items()}, step


def freeze_all_but(model: nn.Module, names: set[str]) -> None:
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)


def full_weights(engine) -> dict[str, torch.Tensor]:
    """Every parameter's full fp32 value (the master copy where one exists), on CPU. Collective."""
    out = {}
    for n, p in engine.module.named_parameters():
        master = safe_get_full_fp32_param(p) if p.requires_grad else None
        out[n] = (master if master is not None else _full_module_param(p)).detach().float().cpu().clone()
    return out


def _full_module_param(p: torch.Tensor) -> torch.Tensor:
    if hasattr(p, "ds_id"):  # ZeRO-3 partitioned and frozen: gather the module copy
        from deepspeed.zero import GatheredParameters

        with GatheredParameters([p], modifier_rank=None):
            return p.detach().clone()
    return p


def restore_masters(engine, weights: dict[str, torch.Tensor]) -> None:
    """Put the fp32 masters back into a freshly built engine, whose masters were rounded from the module's
    dtype (bf16) when it was built. Collective."""
    for n, p in engine.module.named_parameters():
        if p.requires_grad:
            safe_set_full_fp32_param(p, weights[n].to(p.device))
