"""Which blocks are fitted to which targets: the rows of a peeling table (our reconstruction of the paper's
"projections onto intermediate outputs via permutations"; docs/methods.md §3).

Notation: X_0 = embeddings, X_i = residual stream after block i (1-based), recorded once on the calibration
windows. A row is a window of blocks l..l+j and a role assignment: a list of fits, each "a block initialized
from block `source`, fitted so that B'(X_input) ~ X_target". The fitted blocks replace blocks l..l+j, run in
order from X_{l-1}, and the LM loss of that spliced model is the row's bound R.

Permutations (role assignments) implemented:
- forward  (j >= 0): one block from block l, X_{l-1} -> X_{l+j}. This is R(l, j); j = 0 is the sanity row
  (block l refitted to its own output). Removes blocks l+1..l+j.
- backward (j >= 1): one block from block l+j, X_{l-1} -> X_{l+j}: the later block takes the window's role.
  Removes blocks l..l+j-1.
- swap     (j >= 1): j+1 blocks with reversed roles: position l+i starts from block l+j-i and is fitted
  X_{l+i-1} -> X_{l+i}. For j = 1: block l+1 fitted to X_l while block l is fitted to X_{l+1}. Keeps the
  depth, removes nothing: it says whether the blocks' roles are interchangeable, never flags laziness.
A row "removes" the blocks of its window that are not the source of any fit: a bound at or below the model's
loss for such a row says one block can do their work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from pretrain.probes.peeling.errors import PeelingError
from settings.registry import Registry


@dataclass(frozen=True)
class Fit:
    source: int
    """Block (1-based) whose weights initialize the fit (ignored by init=fresh)."""
    input: int
    """Index i of the input X_i."""
    target: int
    """Index i of the target X_i."""


@dataclass(frozen=True)
class Projection:
    layer: int
    """First block l of the window (1-based)."""
    offset: int
    """j: the window is blocks l..l+j."""
    permutation: str
    fits: tuple[Fit, ...]

    @property
    def removed(self) -> list[int]:
        """Blocks of the window whose work the fitted blocks absorb (none are their source)."""
        sources = {f.source for f in self.fits}
        return [b for b in range(self.layer, self.layer + self.offset + 1) if b not in sources]


PERMUTATIONS: Registry[Callable[[int, int], tuple[Fit, ...] | None]] = Registry("peeling permutation", PeelingError)
"""Role assignments: (l, j) -> its fits, or None where it does not apply (or repeats forward)."""


@PERMUTATIONS.register("forward")
def _forward(l: int, j: int) -> tuple[Fit, ...]:
    return (Fit(l, l - 1, l + j),)


@PERMUTATIONS.register("backward")
def _backward(l: int, j: int) -> tuple[Fit, ...] | None:
    return (Fit(l + j, l - 1, l + j),) if j >= 1 else None


@PERMUTATIONS.register("swap")
def _swap(l: int, j: int) -> tuple[Fit, ...] | None:
    return tuple(Fit(l + j - i, l - 1 + i, l + i) for i in range(j + 1)) if j >= 1 else None


def plan(layers: Sequence[int], offsets: Sequence[int], permutations: Sequence[str], n_layers: int) -> list[Projection]:
    """Every applicable (l, j, permutation); windows running past the last block are skipped."""
    rows = []
    for l in layers or range(1, n_layers + 1):
        for j in offsets:
            if l + j > n_layers:
                continue
            for name in permutations:
                fits = PERMUTATIONS[name](l, j)
                if fits is not None:
                    rows.append(Projection(l, j, name, fits))
    return rows
