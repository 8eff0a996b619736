"""The DeepSpeed engine from our config: generated DeepSpeed config + optimizer + schedule, and the model
built for it (partitioned from the start under ZeRO-3)."""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import deepspeed
import torch
from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
from torch import nn

from model import Llama
from model.quant import quantize_model
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
    if cfg.train.optimizer == "sgd":
        # ZeRO steps any torch optimizer over its flat partitions; DeepSpeed asks to be told for those it has not
        # listed. SGD's exact resume under ZeRO 1 and 2 is tested (tests/pretrain/test_recipes.py).
        generated["zero_allow_untested_optimizer"] = True
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


def build_model(cfg: Config) -> Llama:
    """The model for this run. Under ZeRO-3 (with `deepspeed.zero_init`) it is born partitioned: each rank
    allocates its 1/world share, and the Llama init runs one gathered parameter at a time in the same order as
    `Llama.reset_parameters`, so the weights equal an unpartitioned build with the same seed. With
    `train.quantization` its block projections compute with low-bit weights."""
    if cfg.deepspeed.zero_stage != 3 or not cfg.deepspeed.zero_init:
        model = Llama(cfg.model)
    else:
        with deepspeed.zero.Init(config_dict_or_path=deepspeed_config(cfg), mem_efficient_linear=False):
            model = Llama(cfg.model)  # its own reset_parameters met empty shards: the init happens below
        for name, p in model.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                model.init_parameter(name, p)
    quantize_model(model, cfg.train.quantization)
    return model


def is_partitioned(model: nn.Module) -> bool:
    return any(hasattr(p, "ds_id") for p in model.parameters())


def load_weights_into(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """`load_state_dict(strict=True)` that also fills a partitioned model, one gathered parameter at a time
    (a lazy `state` is then read one tensor at a time). Collective under ZeRO-3: every rank calls it with the
    same state."""
    if not is_partitioned(model):
        model.load_state_dict(dict(state), strict=True)
        return
    params = dict(model.named_parameters())
    expected = set(model.state_dict())  # a tied head is a key here but one parameter above
    if set(state) != expected:
        raise ValueError(f"weights differ from the model: missing {sorted(expected - set(state))}, "
                         f"unexpected {sorted(set(state) - expected)}")
    for name, p in params.items():
        tensor = state[name]
        if tuple(tensor.shape) != tuple(p.ds_shape):
            raise ValueError(f"weight {name}: shape {tuple(tensor.shape)}, model {tuple(p.ds_shape)}")
        with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
            p.data.copy_(tensor)
        del tensor


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
    if not is_partitioned(model):  # zero.Init placed its shards already
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
