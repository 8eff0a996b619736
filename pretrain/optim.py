"""The optimizer (AdamW, SGD or DeepSpeed's Muon) over its parameter groups, and the learning-rate schedule (a plain
LambdaLR: easy to test and to resume)."""
from __future__ import annotations

import math

import torch
from torch import nn

from model import ModelConfig, mup
from pretrain.config import TrainConfig, wsd_decay_steps


def param_groups(model: nn.Module, weight_decay: float, lr: float) -> list[dict]:
    """Decay matrices (linear and embedding weights); never norms or biases (1-D tensors). Under µP
    (model.mup) the hidden matrices train at their own lr (model/mup.py): each group carries its `lr` and the
    `lr_scale` that made it, so the schedule (LambdaLR scales every group's own lr), checkpoints and every ZeRO
    stage (each keeps the client's groups) apply it without knowing µP."""
    cfg = getattr(model, "config", None)
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():  # tied duplicates are named once
        if not p.requires_grad:
            continue
        shape = getattr(p, "ds_shape", p.shape)  # a zero.Init shard is a flat 1-D tensor: ask its real shape
        scale = mup.lr_scale(cfg, name) if isinstance(cfg, ModelConfig) else 1.0
        groups.setdefault((len(shape) >= 2, scale), []).append(p)
    # Decayed groups first, then by falling scale: without µP exactly [decay, no_decay], as checkpoints expect.
    order = sorted(groups, key=lambda key: (not key[0], -key[1]))  # a frozen subset can leave a group out
    return [{"params": groups[key], "weight_decay": weight_decay if key[0] else 0.0, "lr": lr * key[1],
             "lr_scale": key[1]} for key in order]


def is_muon_matrix(name: str, p: torch.Tensor) -> bool:
    """Whether Muon updates this parameter: the 2-D matrices of the blocks (attention q/k/v/o, MLP w1/w2/w3), which
    map hidden states to hidden states, as Muon's orthogonalized update assumes. The embedding and the head (a
    lookup table and a map to logits) and the 1-D norm gains go to the auxiliary AdamW (Jordan et al.'s recipe)."""
    return name.startswith("layers.") and len(getattr(p, "ds_shape", p.shape)) == 2


def muon_param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """`param_groups` split into Muon and auxiliary-AdamW halves, each parameter tagged `use_muon` (what DeepSpeed's
    ZeRO-1/2 reads to orthogonalize a gradient) by `is_muon_matrix`: DeepSpeed's own tagging goes by name and would
    put an untied head (`output.weight`) in Muon. The Muon half takes `muon_lr` and `momentum`; the AdamW half `lr`,
    betas and eps; both keep their group's weight decay (none on norms)."""
    names = {id(p): name for name, p in model.named_parameters()}
    groups = []
    for group in param_groups(model, cfg.weight_decay, cfg.lr):  # µP is refused with Muon: every lr_scale is 1
        for p in group["params"]:
            p.use_muon = is_muon_matrix(names[id(p)], p)
        for use_muon in (False, True):  # AdamW first: the logged `lr` (group 0) is train.lr's for every optimizer
            params = [p for p in group["params"] if p.use_muon is use_muon]
            settings = (dict(lr=cfg.muon_lr, momentum=cfg.momentum) if use_muon
                        else dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps))
            if params:
                groups.append({"params": params, "use_muon": use_muon, "weight_decay": group["weight_decay"],
                               **settings})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig, offload: bool = False) -> torch.optim.Optimizer:
    """`train.optimizer`: AdamW, fused (one kernel for the whole update) when the parameters are already on a
    GPU, which is what DeepSpeed's flat fp32 partitions will be too; with ZeRO-Offload (`offload`) the update
    runs on the host, so it is DeepSpeed's vectorized CPU AdamW (JIT-built on first use; DeepSpeed refuses
    others). Or torch's SGD with heavy-ball (or Nesterov) momentum, what the trajectory paper's claims are about.
    Or DeepSpeed's Muon with its auxiliary torch AdamW (`muon_param_groups`): the class DeepSpeed's config would
    build, built here so that our tags, not DeepSpeed's name rule, say which parameters are Muon's."""
    on_gpu = all(p.is_cuda for p in model.parameters())
    if cfg.optimizer == "muon":
        from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam  # imports torch.compile'd kernels

        return MuonWithAuxAdam(muon_param_groups(model, cfg), adam_optimizer=torch.optim.AdamW,
                               adam_optimizer_kwargs={"fused": on_gpu or None})
    groups = param_groups(model, cfg.weight_decay, cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=on_gpu or None)


DECAY_SHAPES = {
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "1-sqrt": lambda progress: 1.0 - math.sqrt(progress),
}
"""progress in [0, 1] of a decay -> the share of (peak - floor) left."""


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, then decay to min_lr_ratio
    over the rest of the run (cosine, linear), or only over its last wsd_decay_steps (wsd), or none (constant)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "wsd":
        decay_steps, shape = wsd_decay_steps(cfg), DECAY_SHAPES[cfg.decay_shape]
        start = cfg.steps - decay_steps
        if step < start:
            return 1.0
    else:
        decay_steps, shape, start = cfg.steps - cfg.warmup_steps, DECAY_SHAPES[cfg.schedule], cfg.warmup_steps
    progress = min(1.0, (step - start) / max(1, decay_steps))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape(progress)


class Schedule(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR: every group's own lr (µP's scaled ones too) times the schedule's factor."""

    def base_lr(self) -> float:
        """train.lr times the factor at this step, before µP's per-group scales: what metrics log as `lr` (a
        group restored from a checkpoint written before `lr_scale` existed has scale 1)."""
        return self.get_last_lr()[0] / self.optimizer.param_groups[0].get("lr_scale", 1.0)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, offset: int = 0) -> Schedule:
    """The schedule from step `offset` on (an engine rebuilt mid-run continues the same curve)."""
    return Schedule(optimizer, lambda step: lr_factor(step + offset, cfg))
