"""The under-optimized verdict (docs/methods.md §3): refit one block against the LM loss itself, with every other
block, the final norm and the head frozen, and ask whether the model's held-out loss falls.

A removal row asks whether a block's work can be done by its neighbour; this asks whether the block left loss on
the table: the local reference solution for its own role, scored as a spliced model like every bound. Each of
`refit_seeds` refits starts from the block's weights and takes `refit_steps` full-batch Adam steps on its own
bootstrap resample of the calibration windows, so the refits differ only in the data they saw; the spread of
their held-out gains is the yardstick. A layer is under-optimized when the one-sided lower 95% t-bound of the
mean gain (model loss minus refitted loss) exceeds `tolerance`: a gain the refits' own seed spread cannot explain.
"""
from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from model.llama import Block, Llama
from model.quant import bake, set_weight_bits
from pretrain.probes.peeling.settings import PeelingSettings

CONFIDENCE = 0.95
"""One-sided confidence of the gain's lower bound."""


@dataclass
class Refit:
    layer: int
    variant: str
    gains: list[float]
    """Per seed: the reference model loss minus the loss with this layer's refitted block spliced in."""
    seconds: float

    @property
    def mean_gain(self) -> float:
        return statistics.fmean(self.gains)

    @property
    def margin(self) -> float:
        """Lower one-sided CONFIDENCE t-bound of the mean gain over seeds (needs two or more seeds)."""
        return gain_lower_bound(self.gains)


def gain_lower_bound(gains: Sequence[float], confidence: float = CONFIDENCE) -> float:
    """mean − t(confidence, n − 1) · sd / √n: the gain the refits support beyond their own seed spread."""
    n = len(gains)
    if n < 2:
        raise ValueError(f"a seed spread needs at least two refits, got {n}")
    se = statistics.stdev(gains) / math.sqrt(n)
    return statistics.fmean(gains) - float(stats.t.ppf(confidence, n - 1)) * se


def tail_loss(model: Llama, blocks: Sequence[nn.Module], h: torch.Tensor, targets: torch.Tensor,
              rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Summed next-token loss of running `blocks` from hidden state h, then the model's final norm and head."""
    for block in blocks:
        h = block(h, *rope)
    logits = model.output(model.norm(h))
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")


def refit_block(model: Llama, hidden: torch.Tensor, targets: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                layer: int, bits: int | None, settings: PeelingSettings, seed: int) -> Block:
    """A copy of block `layer` (1-based) fitted by Adam on the LM loss of the model with it spliced in, from the
    recorded inputs `hidden` [windows, seq, dim] resampled with replacement under `seed`; only its weights move."""
    block = copy.deepcopy(model.layers[layer - 1])
    set_weight_bits(block, bits)
    block.requires_grad_(True).train(False)
    params = list(block.parameters())
    pick = torch.randint(len(hidden), (len(hidden),), generator=torch.Generator().manual_seed(seed))
    hidden, targets = hidden[pick], targets[pick]
    rest = list(model.layers[layer:])
    opt = torch.optim.Adam(params, lr=settings.refit_lr)
    for _ in range(settings.refit_steps):
        opt.zero_grad(set_to_none=True)
        for i in range(0, len(hidden), settings.batch_windows):  # accumulate the full batch in chunks
            chunk = slice(i, i + settings.batch_windows)
            loss = tail_loss(model, [block, *rest], hidden[chunk], targets[chunk], rope) / targets.numel()
            loss.backward(inputs=params)  # the frozen model's weights get no gradient
        opt.step()
    bake(block)
    return block.requires_grad_(False)

