"""AdamW parameter groups and the learning-rate schedule (a plain LambdaLR: easy to test and to resume)."""
from __future__ import annotations

import math

import torch
from torch import nn

from pretrain.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear and embedding weights); never norms or biases (1-D tensors)."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for p in model.parameters():  # parameters() skips tied duplicates, so each tensor appears once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        shape = getattr(p, "ds_shape", p.shape)  # a zero.Init shard is a flat 1-D tensor: ask its real shape
        (decay if len(shape) >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]  # a frozen subset can leave a group empty


def build_optimizer(model: nn.Module, cfg: TrainConfig, offload: bool = False) -> torch.optim.Optimizer:
    """AdamW; fused (one kernel for the whole update) when the parameters are already on a GPU, which is
    what DeepSpeed's flat fp32 partitions will be too. With ZeRO-Offload (`offload`) the update runs on the
    host, so it is DeepSpeed's vectorized CPU AdamW (JIT-built on first use; DeepSpeed refuses others)."""
    groups = param_groups(model, cfg.weight_decay)
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, adamw_mode=True)
    on_gpu = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=on_gpu or None)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, then decay to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    decay_steps = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    if cfg.schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:  # linear
        shape = 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, offset: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule from step `offset` on (an engine rebuilt mid-run continues the same curve)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step + offset, cfg))
