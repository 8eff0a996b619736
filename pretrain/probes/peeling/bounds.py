"""Peeling bounds of one model on a fixed calibration set (docs/methods.md §3; the method is our reconstruction).

Record X_0..X_L once; for each planned row (plan.py) and weight variant, fit the row's blocks (fit.py), splice
them in place of blocks l..l+j and measure the LM loss: the bound R. Splicing runs the fitted blocks from the
recorded X_{l-1} and then the model's own later blocks, final norm and head: the spliced copy's loss exactly,
since its earlier blocks are unchanged, without copying the model. Two verdicts per layer:
- removable ("lazy"): some row that removes it (one block does its work) reaches the model's loss within
  `tolerance`;
- under-optimized: refitting its block on the LM loss, everything else frozen (refit.py), lowers the model's loss
  by more than `tolerance` beyond the refits' own seed spread.

Blocks fitted and scored on the same windows give an in-sample, optimistic bound. With held-out windows
(`holdout_windows`, taken after the calibration windows), every row is also scored there and the verdicts
use only the held-out bounds against the model's held-out loss.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from model.llama import Llama, rope_cos_sin
from pretrain.probes.peeling.fit import Rope, fit_block, fresh_block
from pretrain.probes.peeling.plan import Projection, plan
from pretrain.probes.peeling.refit import Refit, refit_block, tail_loss
from pretrain.probes.peeling.settings import PeelingSettings, check_settings, parse_variant


@dataclass
class Recording:
    hidden: list[torch.Tensor]
    """X_0..X_L, each [windows, seq, dim]."""
    targets: torch.Tensor
    """Next-token targets [windows, seq]."""
    rope: Rope


@dataclass
class Row:
    layer: int
    offset: int
    permutation: str
    variant: str
    bound: float
    model_loss: float
    fit_mse: float
    """Mean over the row's fits of the fitted block's MSE."""
    init_mse: float
    """Mean over the row's fits of the initial block's MSE."""
    removes: list[int]
    seconds: float
    holdout_bound: float | None = None
    """The same fitted blocks scored on the held-out windows (None when there are none)."""

    @property
    def label(self) -> str:
        return f"j={self.offset} {self.permutation} {self.variant}"


@dataclass
class LayerVerdict:
    layer: int
    removal_bound: float | None
    """Lowest bound over the rows that remove this layer (None when no row does)."""
    removal_row: str | None
    """Which row reached it: `l=<l> j=<j> <permutation> <variant>`."""
    margin: float | None
    """model_loss - removal_bound: >= -tolerance flags the layer."""
    lazy: bool
    """Removable: a row that removes the layer reaches the model's loss."""
    refit_gain: float | None = None
    """Mean over seeds of model loss minus the loss with the block refitted on the LM loss (best variant)."""
    refit_margin: float | None = None
    """Lower one-sided 95% t-bound of that gain over seeds: > tolerance flags the layer under-optimized."""
    refit_variant: str | None = None
    under_optimized: bool = False


@dataclass
class Bounds:
    model_loss: float
    rows: list[Row]
    layers: list[LayerVerdict]
    settings: PeelingSettings
    seconds: float
    holdout_model_loss: float | None = None
    """The trained model's loss on the held-out windows (None when there are none)."""
    meta: dict = field(default_factory=dict)
    """Where the numbers come from: checkpoint, step, calibration windows, ..."""
    refits: list[Refit] = field(default_factory=list)

    @property
    def scored_on(self) -> str:
        return "held-out" if self.holdout_model_loss is not None else "calibration (in-sample)"

    @property
    def lazy_layers(self) -> list[int]:
        return [v.layer for v in self.layers if v.lazy]

    @property
    def under_optimized_layers(self) -> list[int]:
        return [v.layer for v in self.layers if v.under_optimized]

    def to_json(self) -> dict:
        return {"method": "peeling bounds, our reconstruction of arXiv 2605.02853 (docs/methods.md §3)",
                **self.meta, "model_loss": self.model_loss, "holdout_model_loss": self.holdout_model_loss,
                "verdicts_scored_on": self.scored_on, "seconds": self.seconds,
                "settings": dataclasses.asdict(self.settings), "lazy_layers": self.lazy_layers,
                "under_optimized_layers": self.under_optimized_layers,
                "rows": [dataclasses.asdict(r) for r in self.rows],
                "refits": [dataclasses.asdict(r) for r in self.refits],
                "layers": [dataclasses.asdict(v) for v in self.layers]}


@torch.no_grad()
def record(model: Llama, windows: torch.Tensor, batch_windows: int) -> Recording:
    """Block inputs/outputs X_0..X_L of the model on token windows [N, seq_len + 1]."""
    inputs, targets = windows[:, :-1], windows[:, 1:]
    chunks = [model(inputs[i:i + batch_windows], return_hidden_states=True).hidden_states
              for i in range(0, len(inputs), batch_windows)]
    cfg = model.config
    rope = rope_cos_sin(inputs.shape[1], cfg, inputs.device)
    return Recording([torch.cat(parts) for parts in zip(*chunks)], targets, rope)


@torch.no_grad()
def lm_loss_from(model: Llama, h: torch.Tensor, blocks: Sequence[nn.Module], rec: Recording,
                 batch_windows: int) -> float:
    """Mean next-token loss of running `blocks` from hidden state h, then the model's final norm and head."""
    total = sum(tail_loss(model, blocks, h[i:i + batch_windows], rec.targets[i:i + batch_windows], rec.rope).item()
                for i in range(0, len(h), batch_windows))
    return total / rec.targets.numel()


def measure_row(model: Llama, rec: Recording, proj: Projection, variant: str, settings: PeelingSettings,
                model_loss: float, holdout: Recording | None = None) -> Row:
    """Fit the row's blocks in one variant and measure the spliced model's loss (also on `holdout`)."""
    start = time.perf_counter()
    bits = parse_variant(variant)
    fitted = []
    for fit in proj.fits:
        init = model.layers[fit.source - 1] if settings.init == "block" else fresh_block(model.config, settings.seed)
        init = init.to(rec.targets.device)
        fitted.append(fit_block(init, rec.hidden[fit.input], rec.hidden[fit.target], rec.rope, bits, settings))
    last = proj.layer + proj.offset
    blocks = [f.block for f in fitted] + list(model.layers[last:])
    bound = lm_loss_from(model, rec.hidden[proj.layer - 1], blocks, rec, settings.batch_windows)
    held = None if holdout is None else \
        lm_loss_from(model, holdout.hidden[proj.layer - 1], blocks, holdout, settings.batch_windows)
    return Row(proj.layer, proj.offset, proj.permutation, variant, bound, model_loss,
               fit_mse=sum(f.mse for f in fitted) / len(fitted),
               init_mse=sum(f.init_mse for f in fitted) / len(fitted),
               removes=proj.removed, seconds=time.perf_counter() - start, holdout_bound=held)


def measure_refit(model: Llama, rec: Recording, layer: int, variant: str, settings: PeelingSettings,
                  reference: float, score_on: Recording) -> Refit:
    """`settings.refit_seeds` LM-loss refits of block `layer` fitted on `rec`, each scored on `score_on` (the
    held-out windows, or `rec` itself) against the model's loss there, `reference`."""
    start, gains = time.perf_counter(), []
    for s in range(settings.refit_seeds):
        block = refit_block(model, rec.hidden[layer - 1], rec.targets, rec.rope, layer, parse_variant(variant),
                            settings, seed=settings.seed * 1_000 + s)
        blocks = [block, *model.layers[layer:]]
        gains.append(reference - lm_loss_from(model, score_on.hidden[layer - 1], blocks, score_on,
                                              settings.batch_windows))
    return Refit(layer, variant, gains, time.perf_counter() - start)


def verdicts(rows: Sequence[Row], n_layers: int, model_loss: float, tolerance: float,
             holdout_model_loss: float | None = None, refits: Sequence[Refit] = ()) -> list[LayerVerdict]:
    """Per layer: the best bound of a row that removes it, and whether that reaches the model's loss (removable);
    the refits' best gain bound over variants, and whether it clears `tolerance` (under-optimized). With a
    held-out model loss, held-out bounds against it (the in-sample ones are not looked at)."""
    def score(row: Row) -> float:
        return row.bound if holdout_model_loss is None else row.holdout_bound

    reference = model_loss if holdout_model_loss is None else holdout_model_loss
    out = []
    for layer in range(1, n_layers + 1):
        removing = [r for r in rows if layer in r.removes]
        if not removing:
            verdict = LayerVerdict(layer, None, None, None, False)
        else:
            best = min(removing, key=score)
            verdict = LayerVerdict(layer, score(best), f"l={best.layer} {best.label}", reference - score(best),
                                   score(best) <= reference + tolerance)
        own = [r for r in refits if r.layer == layer]
        if own:
            top = max(own, key=lambda r: r.margin)
            verdict = dataclasses.replace(verdict, refit_gain=top.mean_gain, refit_margin=top.margin,
                                          refit_variant=top.variant, under_optimized=top.margin > tolerance)
        out.append(verdict)
    return out


def compute_bounds(model: Llama, windows: torch.Tensor, settings: PeelingSettings,
                   progress: Callable[[Iterable, int], Iterable] = lambda it, total: it,
                   holdout: torch.Tensor | None = None) -> Bounds:
    """Every planned row in every variant fitted on `windows` [N, seq_len + 1] and scored there and, when given,
    on the held-out windows `holdout` (which then decide the verdicts), and every layer's LM-loss refits;
    `progress` wraps the work loop."""
    start = time.perf_counter()
    n_layers = model.config.n_layers
    check_settings(settings, n_layers)
    model.eval()
    rec = record(model, windows, settings.batch_windows)
    model_loss = lm_loss_from(model, rec.hidden[0], list(model.layers), rec, settings.batch_windows)
    held, held_loss = None, None
    if holdout is not None and len(holdout):
        held = record(model, holdout, settings.batch_windows)
        held_loss = lm_loss_from(model, held.hidden[0], list(model.layers), held, settings.batch_windows)
    score_on, reference = (rec, model_loss) if held is None else (held, held_loss)
    work = [("row", p, v) for p in plan(settings.layers, settings.offsets, settings.permutations, n_layers)
            for v in settings.variants]
    if settings.refit_seeds:
        work += [("refit", layer, v) for layer in settings.layers or range(1, n_layers + 1) for v in settings.variants]
    rows, refits = [], []
    for kind, what, variant in progress(work, len(work)):
        if kind == "row":
            rows.append(measure_row(model, rec, what, variant, settings, model_loss, held))
        else:
            refits.append(measure_refit(model, rec, what, variant, settings, reference, score_on))
    return Bounds(model_loss, rows, verdicts(rows, n_layers, model_loss, settings.tolerance, held_loss, refits),
                  settings, time.perf_counter() - start, holdout_model_loss=held_loss, refits=refits)
