"""The DeepSpeed engine from our config: generated DeepSpeed config + optimizer + schedule."""
from __future__ import annotations

import copy
import logging
from typing import Any

import deepspeed
from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
from torch import nn

from pretrain import dist
from pretrain.config import Config
from pretrain.optim import build_optimizer, build_scheduler

log = logging.getLogger("growlm")


def deepspeed_config(cfg: Config) -> dict[str, Any]:
    """The DeepSpeed config we generate; `deepspeed.config` from the run config is merged last."""
    bf16 = cfg.train.precision == "bf16"
    generated: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "gradient_clipping": cfg.train.grad_clip,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        # check_grad_overflow: skip (never apply) an update whose gradient norm is inf/NaN, as fp32 ZeRO does.
        "bf16": {"enabled": bf16, "check_grad_overflow": True} if bf16 else {"enabled": False},
        "steps_per_print": 10**9,  # we log; keep DeepSpeed's own prints quiet
        "wall_clock_breakdown": False,
    }
    if bf16:
        # Accumulate micro-batch gradients in fp32: bf16 sums lose low bits over many micro-batches.
        generated["data_types"] = {"grad_accum_dtype": "fp32"}
    return deep_merge(generated, cfg.deepspeed.config)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; values of `override` win."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def offloads_optimizer(ds_config: dict[str, Any]) -> bool:
    """Whether ZeRO-Offload keeps the optimizer state (and runs its update) off the accelerator."""
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") in ("cpu", "nvme")


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block in backward with DeepSpeed's checkpointing (works under every ZeRO stage)."""
    model.checkpoint_fn = deepspeed.checkpointing.checkpoint


def build_engine(model: nn.Module, cfg: Config, lr_offset: int = 0):
    """deepspeed.initialize with a client AdamW (decoupled decay, no decay on norms) and our LambdaLR.

    Only parameters that require grad get optimizer state; `lr_offset` starts the schedule mid-way."""
    if cfg.train.activation_checkpointing:
        enable_activation_checkpointing(model)
    if cfg.train.compile:
        for block in model.layers:
            block.compile()  # in place, unlike torch.compile(block): state-dict keys gain no `_orig_mod.`
    model.to(dist.device())  # DeepSpeed would move it anyway; first, so the optimizer is built on-device
    ds_config = deepspeed_config(cfg)
    optimizer = build_optimizer(model, cfg.train, offload=offloads_optimizer(ds_config))
    scheduler = build_scheduler(optimizer, cfg.train, lr_offset)
    log.info("optimizer: %s%s", type(optimizer).__name__, " (fused)" if optimizer.defaults.get("fused") else "")
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    if engine.dp_world_size == 1 and isinstance(engine.optimizer, BF16_Optimizer):
        # One data-parallel rank: the all-reduce is an identity that still flattens and copies every fp32
        # gradient (2-2.6% of a CPU bf16 step). ZeRO-1/2's own optimizer needs its reduce to fill partitions.
        engine.enable_backward_allreduce = False
    return engine, optimizer, scheduler
