"""What a peeling job fits and measures: one dataclass shared by the CLI, the scheduler and the core.

Each field's `help` is its documentation; the CLI and the scheduler's argv are both built from the fields
(pretrain/probes/cli.py). Settings only: the run config imports this module.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List

from settings.fields import a_device, above, at_least, check_fields, one_of
from pretrain.probes.cli import setting
from pretrain.probes.peeling.errors import PeelingError
from pretrain.probes.peeling.plan import PERMUTATIONS, plan
from pretrain.probes.schedule import JobSchedule
from pretrain.probes.registry import register_job

SOLVERS = ("adam", "lstsq")
INITS = ("block", "fresh")
_KBIT = re.compile(r"^(\d+)bit$")


def parse_variant(name: str) -> int | None:
    """Bits of a variant name: None for fp, 1 for binary, k for `<k>bit`; raises naming the valid forms."""
    if name == "fp":
        return None
    if name == "binary":
        return 1
    m = _KBIT.match(name)
    if m and 2 <= int(m.group(1)) <= 16:
        return int(m.group(1))
    raise PeelingError(f"variant {name!r} is not valid: use fp, binary or <k>bit with 2 <= k <= 16 (e.g. 4bit)")


@dataclass
class PeelingSettings:
    """Peeling bounds (docs/methods.md §3, our reconstruction of arXiv 2605.02853): what to fit and how."""

    layers: List[int] = setting([], "1-based layers l whose windows l..l+j are peeled; empty = every layer")
    offsets: List[int] = setting([1], "offsets j: a block is fitted to X_{l+j} (0 = the layer's own output)")
    permutations: List[str] = setting(
        ["forward", "backward"],
        "role assignments within a window (see pretrain/probes/peeling/plan.py); forward is R(l, j) itself")
    variants: List[str] = setting(["fp"], "weight variants: fp | binary | <k>bit (2 <= k <= 16)")
    solver: str = setting("adam", "adam: fit the whole block by MSE | lstsq: closed-form solve of wo and w2",
                          valid=one_of(SOLVERS))
    init: str = setting("block", "block: start each fit from the source block's weights | fresh: a new random block",
                        valid=one_of(INITS))
    steps: int = setting(10, "Adam steps per fit (full batch over the calibration windows)", valid=above(0))
    lr: float = setting(1e-3, "Adam learning rate", valid=above(0))
    lstsq_rounds: int = setting(3, "lstsq: alternate solve / recompute the MLP input this many times",
                                valid=above(0))
    calib_windows: int = setting(8, "validation windows in the fixed calibration set (the first N)",
                                 valid=above(0))
    holdout_windows: int = setting(8, "validation windows after the calibration set on which every fitted row is "
                                    "scored again; the verdicts use these out-of-sample bounds (0: in-sample)",
                                  valid=at_least(0))
    batch_windows: int = setting(8, "windows per forward pass when recording hidden states and measuring losses",
                                 valid=above(0))
    tolerance: float = setting(1e-3, "a layer is flagged removable (lazy) when a bound that removes it is <= model "
                               "loss + this, and under-optimized when its refits' gain bound exceeds this",
                               valid=at_least(0))
    refit_seeds: int = setting(0, "refits of each layer's block on the LM loss (the under-optimized verdict; "
                               "pretrain/probes/peeling/refit.py), each on its own bootstrap resample of the "
                               "calibration windows: their spread sets the margin (0: off; else >= 2)",
                               valid=at_least(0))
    refit_steps: int = setting(10, "Adam steps per LM-loss refit (full batch)", valid=above(0))
    refit_lr: float = setting(1e-3, "Adam learning rate of the LM-loss refits", valid=above(0))
    device: str = setting("cpu", "torch device for the job (cpu keeps it off the training GPUs)", valid=a_device())
    threads: int = setting(0, "torch CPU threads for the job (0: torch's default); beside CPU training ranks, "
                           "a few threads keep it from starving them", valid=at_least(0))
    seed: int = setting(0, "seed of fresh inits")


THOROUGH = {"offsets": [0, 1], "permutations": ["forward", "backward", "swap"], "variants": ["fp", "binary", "4bit"],
            "steps": 200, "calib_windows": 16, "holdout_windows": 16, "refit_seeds": 3}
"""The opt-in thorough profile (`--offsets 0,1 --permutations forward,backward,swap --variants fp,binary,4bit
--steps 200 --calib-windows 16 --holdout-windows 16 --refit-seeds 3`): every role assignment and weight variant,
fitted much longer, and the under-optimized verdict. The defaults are the cheap detector (bench/peeling.py:
0.1-0.25x the training time between two checkpoints of configs/tiny.yaml at 4 and 8 layers, where this profile
costs ~27x at 4): one fp block refitted to do the work of two neighbours (forward and backward, j = 1, so every
layer is tested for removal) with 10 Adam steps on 8 windows, scored on 8 others. What they give up: low-bit
bounds, role swaps, the j = 0 sanity rows, the under-optimized verdict (`--refit-seeds 3` adds it: ~0.9x the
interval at 4 layers, since each refit runs the rest of the model and the head), and tightness: a short fit only
reaches the model's loss where a layer is already nearly redundant, so they flag fewer layers than the thorough
fits would."""


def check_settings(s: PeelingSettings, n_layers: int | None = None) -> None:
    """Refuse settings that cannot run (on a model with `n_layers` blocks, when known), naming the setting: each
    field's declared valid values, then what looks inside the lists and across fields."""
    try:
        check_fields(s)
    except ValueError as err:
        raise PeelingError(str(err)) from None
    bad_layers = [l for l in s.layers if l < 1 or (n_layers is not None and l > n_layers)]
    if bad_layers:
        raise PeelingError(f"layers={bad_layers} out of range: the model has layers 1..{n_layers or 'L'}")
    if not s.offsets or any(j < 0 for j in s.offsets):
        raise PeelingError(f"offsets={s.offsets} must be a non-empty list of integers >= 0")
    unknown = [p for p in s.permutations if p not in PERMUTATIONS]
    if unknown or not s.permutations:
        raise PeelingError(f"permutations={s.permutations}: choose from {PERMUTATIONS.names()}")
    if s.init == "fresh" and "backward" in s.permutations:
        raise PeelingError("permutation 'backward' differs from 'forward' only in its init block; "
                           "with init=fresh they coincide: drop 'backward'")
    if not s.variants:
        raise PeelingError("variants must not be empty")
    if s.refit_seeds == 1:
        raise PeelingError("refit_seeds=1 gives no seed spread to measure the margin against: use 0 (off) or >= 2")
    for v in s.variants:
        parse_variant(v)
    if n_layers is not None and not plan(s.layers, s.offsets, s.permutations, n_layers):
        raise PeelingError(f"layers={s.layers or 'all'} with offsets={s.offsets} and permutations={s.permutations} "
                           f"peel nothing in a {n_layers}-layer model: a window l..l+j must end by layer {n_layers}")


@dataclass
class PeelingConfig(JobSchedule, PeelingSettings):
    """When to run peeling bounds during training (the `jobs.peeling` section, docs/methods.md §3), plus the job's
    settings."""

    def check(self) -> None:
        check_settings(self)  # every field's rule (the schedule's too), then the lists and fields together


register_job("peeling", PeelingConfig, "pretrain.probes.peeling.callback:PeelingJob",
             "Peeling bounds on saved checkpoints.")
