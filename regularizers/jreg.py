"""JREG: penalize the hidden-state jump at the last layers, lambda * sum_{l in S} w_l * Psi_l (docs/methods.md §1)."""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor

from regularizers.base import InvalidParam, LossInputs, Regularizer, RegularizerConfigError
from regularizers.jump import displacement, zeta_final
from regularizers.registry import register


@register("jreg")
class JReg(Regularizer):
    """Jump regularizer. The paper's exact form is a reconstruction; every choice below is a parameter.

    Only the displacements in S (plus Psi_{L-1}, Psi_L without gradient, for the zeta_L metric) are computed,
    from hidden states the forward pass already produced: no extra forward.
    Metrics: psi_L and zeta_L from the same states and form as the penalty.
    """

    needs_hidden_states = True
    needs_logits = False

    variant: Literal["final", "weighted", "rise"] = "final"
    """"final": S = {L}, w = 1 (the paper's regularizer). "weighted": S = all layers with depth weights, so
    the penalty cannot simply move the jump to layer L-1 (which `final` was seen to do in the probe of docs/methods.md §1).
    "rise": the positive increments sum_{l in S} max(0, Psi_l - Psi_{l-1}) over S = 2..L by default, i.e. a
    differentiable zeta_2 / 100: a jump is penalized wherever in the top layers it rises, and a profile that
    only climbs gently costs little (Psi_1, the embedding's large first step, has no predecessor to rise from)."""
    form: Literal["cosine", "angular"] = "cosine"
    """Psi as (1 - cos)/2 (the paper's metric) or arccos(cos)/pi (linear in the angle, stronger gradient
    for small displacements)."""
    final_norm: Literal["include", "exclude"] = "include"
    """h_L as norm(h_L) ("include") or the raw residual stream ("exclude"). Default include: the paper's jump
    was measured on open-weight models through `transformers`' output_hidden_states, whose last entry is
    after the final norm (still so in transformers 5), and the probe of docs/methods.md §1 ran JREG that way. At init (unit
    norm gains) the two agree exactly, cosine being scale-invariant; they part as the gains are learned, and
    with include the gains themselves receive the penalty's gradient."""
    layers: Optional[list[int]] = None
    """S as 1-based layer indices (Psi_l compares h_{l-1} with h_l); negative count from the end (-1 = L), so
    a config survives depth growth. None: {L} for final, 1..L for weighted."""
    depth_weights: Optional[Literal["linear", "uniform"] | list[float]] = None
    """Weights w_l for variant weighted (None = linear). linear: w_l = l/L, so deeper layers, where the jump
    appears, weigh more and w_L = 1 keeps lambda comparable with `final`. uniform: w_l = 1. A list: one
    weight per layer of S, in S's order."""

    def validate(self) -> None:
        if self.depth_weights is not None and self.variant != "weighted":
            raise InvalidParam("depth_weights", f"only applies to variant 'weighted' (variant is {self.variant!r})")
        if self.layers is not None:
            if not self.layers:
                raise InvalidParam("layers", "must list at least one layer (or be null for the default)")
            if 0 in self.layers:
                raise InvalidParam("layers", "indices are 1-based (1..L, or -L..-1); h_0 has no displacement")
        if isinstance(self.depth_weights, list):
            if self.layers is not None and len(self.depth_weights) != len(self.layers):
                raise InvalidParam(
                    "depth_weights", f"has {len(self.depth_weights)} weights for {len(self.layers)} layers"
                )
            if any(w < 0 for w in self.depth_weights):
                raise InvalidParam("depth_weights", f"weights must be >= 0, got {self.depth_weights}")

    def selection(self, n_layers: int) -> tuple[list[int], list[float]]:
        """S (1-based, resolved) and its weights w_l for a model with `n_layers` blocks."""
        if self.layers is None:
            layers = {"final": [n_layers], "weighted": list(range(1, n_layers + 1)),
                      "rise": list(range(2, n_layers + 1))}[self.variant]
        else:
            layers = [l if l > 0 else n_layers + 1 + l for l in self.layers]
            bad = [given for given, l in zip(self.layers, layers) if not 1 <= l <= n_layers]
            if bad:
                raise RegularizerConfigError(
                    f"jreg.layers: {bad} out of range for a {n_layers}-layer model (valid: 1..{n_layers} "
                    f"or -{n_layers}..-1)"
                )
            if len(set(layers)) != len(layers):
                raise RegularizerConfigError(f"jreg.layers: {self.layers} names a layer twice (L={n_layers})")
        if self.variant == "rise" and (not layers or min(layers) < 2):
            raise RegularizerConfigError(f"jreg variant rise: layers {self.layers} must be 2..L (L={n_layers}): "
                                         "Psi_1 has no Psi_0 to rise from")
        if self.variant in ("final", "rise") or self.depth_weights == "uniform":
            weights = [1.0] * len(layers)
        elif isinstance(self.depth_weights, list):
            if len(self.depth_weights) != len(layers):
                raise RegularizerConfigError(
                    f"jreg.depth_weights: {len(self.depth_weights)} weights for {len(layers)} layers (L={n_layers})"
                )
            weights = list(self.depth_weights)
        else:  # linear
            weights = [l / n_layers for l in layers]
        return layers, weights

    def penalty(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        if inputs.hidden_states is None:
            raise ValueError("jreg needs hidden states: run the model with return_hidden_states=True")
        states = list(inputs.hidden_states)
        if self.final_norm == "include":
            if inputs.final_normed is None:
                raise ValueError("jreg final_norm=include needs LossInputs.final_normed (norm(h_L))")
            states[-1] = inputs.final_normed
        n_layers = len(states) - 1
        layers, weights = self.selection(n_layers)

        def psi(l: int) -> Tensor:
            return displacement(states[l - 1], states[l], inputs.mask, self.form)

        needed = set(layers) | ({l - 1 for l in layers} if self.variant == "rise" else set())
        penalized = {l: psi(l) for l in sorted(needed)}
        with torch.no_grad():
            monitored = {l: penalized[l] if l in penalized else psi(l) for l in (n_layers - 1, n_layers) if l >= 1}
        if self.variant == "rise":
            terms = [w * torch.relu(penalized[l] - penalized[l - 1]) for l, w in zip(layers, weights)]
        else:
            terms = [w * penalized[l] for l, w in zip(layers, weights)]
        loss = torch.stack(terms).sum()
        metrics = {"psi_L": monitored[n_layers]}
        if n_layers >= 2:
            metrics["zeta_L"] = zeta_final(torch.stack([monitored[n_layers - 1], monitored[n_layers]]))
        return loss, metrics
