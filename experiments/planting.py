"""Models with planted layers, whose truth is known, for checking peeling's verdicts (experiments/peeling_planted.py).

A plant is what was done to one block (1-based layer) of a model trained on a run config's data:
- `frozen_init`: never trained (its weights stay at initialization; the rest learn around it);
- `frozen_early`: trained until `freeze_step`, then frozen;
- `identity`: its output projections (wo, w2) zeroed at initialization and the block frozen: it adds nothing;
- `scaled_<alpha>`: trained normally, then its output projections multiplied by alpha (its update shrunk).
The training loop is plain torch in one process (the run config's AdamW, schedule, clipping, batch and
quantization-aware training), not the launched trainer: freezing one block from a chosen step is not a trainer
feature, and a one-core loop keeps dozens of planted models affordable (docs/guide.md, "Peeling bounds").
"""
from __future__ import annotations

import random
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from model import Llama
from model.config import QuantizationConfig
from model.quant import bake, quantize_model
from pretrain.config import Config
from pretrain.optim import build_optimizer, build_scheduler

FROZEN_KINDS = ("frozen_init", "frozen_early", "identity")


def plant_kinds(alphas: list[float]) -> list[str]:
    """Every plant of an experiment, in report order."""
    return ["frozen_init", "frozen_early", *(f"scaled_{a:g}" for a in alphas), "identity"]


def place_plants(kinds: list[str], n_layers: int, seed: int) -> dict[int, str]:
    """layer -> plant: each kind at its own layer, drawn under `seed`; the other layers are normal."""
    if len(kinds) >= n_layers:
        raise ValueError(f"{len(kinds)} plants need a model of more than {len(kinds)} layers (it has {n_layers}), "
                         "so that some layers stay normal")
    layers = random.Random(seed).sample(range(1, n_layers + 1), len(kinds))
    return dict(zip(layers, kinds))


def scale_of(kind: str) -> Optional[float]:
    return float(kind.split("_", 1)[1]) if kind.startswith("scaled_") else None


@torch.no_grad()
def _scale_outputs(block: torch.nn.Module, factor: float) -> None:
    for linear in (block.attention.wo, block.feed_forward.w2):
        linear.weight.mul_(factor)


def frozen_from(plants: dict[int, str], freeze_step: int) -> dict[int, int]:
    """layer -> the first step at which its block no longer trains."""
    return {layer: 0 if kind != "frozen_early" else freeze_step
            for layer, kind in plants.items() if kind in FROZEN_KINDS}


def train_planted(cfg: Config, plants: dict[int, str], freeze_step: int, windows: np.ndarray, seed: int,
                  bits: Optional[int] = None,
                  on_step: Callable[[int, Llama], None] = lambda step, model: None) -> Llama:
    """A model of `cfg.model` trained `cfg.train.steps` steps on random batches of `windows` [N, seq_len + 1],
    with `plants` applied, quantization-aware at `bits` (baked in at the end). `on_step(step, model)` is called
    after each step (the model in training form: latent weights, plants not yet scaled)."""
    torch.manual_seed(seed)
    model = Llama(cfg.model)
    if bits is not None:
        quantize_model(model, QuantizationConfig(bits=bits))
    for layer, kind in plants.items():
        if kind == "identity":
            _scale_outputs(model.layers[layer - 1], 0.0)
    optimizer, frozen = build_optimizer(model, cfg.train), frozen_from(plants, freeze_step)
    schedule = build_scheduler(optimizer, cfg.train)
    batches = torch.Generator().manual_seed(seed)
    for step in range(cfg.train.steps):
        batch = torch.from_numpy(windows[torch.randint(len(windows), (cfg.train.micro_batch_size,),
                                                       generator=batches).numpy()].astype(np.int64))
        loss = F.cross_entropy(model(batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for layer, start in frozen.items():
            if step >= start:  # no gradient: AdamW skips the block entirely (no moments, no weight decay)
                for p in model.layers[layer - 1].parameters():
                    p.grad = None
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        schedule.step()
        on_step(step + 1, model)
    bake(model)
    for layer, kind in plants.items():
        if (alpha := scale_of(kind)) is not None:
            _scale_outputs(model.layers[layer - 1], alpha)
    return model.eval()
