"""Norm-only hybrid training (METHODS.md §4): after step t0 only the RMSNorm gains (and chosen groups) train.

DeepSpeed builds its flat optimizer partitions from the parameters that require grad when the engine is
created, so freezing mid-run means a new engine over the trainable subset: the frozen parameters' fp32
masters and Adam moments are dropped (memory falls, and the clipped gradient norm is the subset's own);
the trainable ones keep their exact fp32 masters, and the lr schedule continues where it was.
Deviation from METHODS.md §4: the subset's Adam moments restart at t0. Carrying them needs DeepSpeed's
per-parameter optimizer-state fragments, which in 0.19.8 are not linked for every parameter on every rank
under multi-rank ZeRO-1/2 (safe_get_full_optimizer_state raises), so we do not depend on them.
Every function that touches the engine is collective under ZeRO-3: all ranks call it in the same order.
"""
from __future__ import annotations

import re
import torch
from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param
from torch import nn

from pretrain.config import TrainableConfig

NORM = re.compile(r"(^|\.)(attention_norm|ffn_norm|norm)\.weight$")


def trainable_names(model: nn.Module, cfg: TrainableConfig) -> set[str]:
    """Names of the parameters that train in the subset phase."""
    extra = [re.compile(g) for g in cfg.groups]
    return {n for n, _ in model.named_parameters() if NORM.search(n) or any(p.search(n) for p in extra)}


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
