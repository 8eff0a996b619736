"""A spec's pre-registered protocol: the baseline, the claims (each primary outcome's predicted direction or
equivalence margin, and "amplifies" slopes) and the family-wise alpha, fixed in the spec before any run, so that
compare.md tests exactly these claims and sets every run outside the seed plan apart (docs/guide.md,
"Pre-registered experiments").

    protocol:
      baseline: baseline                        # the arm every claim is made against
      alpha: 0.05                               # family-wise error rate of each family (Holm)
      primary:                                  # metric key, as metrics.jsonl logs it -> its claim
        jump/zeta_L: {predicts: lower}          # one-sided Welch t-test (lower | higher; differs: two-sided)
        val/loss: {equivalent_within: 0.02}     # two one-sided tests (TOST) against +-0.02
        train/loss: {equivalent_within: 0.02, paired: true}   # ... paired by seed (arms branched from the baseline)
      slopes:                                   # per-seed least-squares slope of the metric against step
        jump/zeta_L: {window: [400, 1000], predicts: higher, arms: [constant_lr]}

Every claim is about `arms` (default: every arm but the baseline) against the baseline, by Welch's unequal-variance
tests unless it says `paired: true`: then arm and baseline runs of one seed form a pair and the tests are paired
t-tests, right for arms identical to the baseline up to a branching step (train.trainable's t0), whose shared
seed-to-seed spread an unpaired test would count as noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from experiments.errors import ExperimentError

PREDICTIONS = {"lower": "less", "higher": "greater", "differs": "two-sided"}
"""What a directional claim may predict of arm − baseline -> the alternative hypothesis scipy tests."""
PROTOCOL_KEYS = ("baseline", "alpha", "primary", "slopes")
PRIMARY_KEYS = ("predicts", "equivalent_within", "arms", "paired")
SLOPE_KEYS = ("window", "predicts", "arms")
SLOPE_UNIT = 1000
"""Slopes are reported per this many steps: a jump's growth reads as a number near 1, not 0.001."""


@dataclass(frozen=True)
class Outcome:
    """One claim about `metric`, made of each of `arms` against the baseline: a predicted direction of its final
    value (or of its slope over `window`), or equivalence within `margin`; `paired`: tested paired by seed."""

    metric: str
    arms: tuple[str, ...]
    predicts: Optional[str] = None
    margin: Optional[float] = None
    window: Optional[tuple[int, int]] = None
    paired: bool = False

    @property
    def label(self) -> str:
        if self.window is None:
            return self.metric
        return f"slope of {self.metric}, steps {self.window[0]}-{self.window[1]} (per {SLOPE_UNIT:,} steps)"


@dataclass(frozen=True)
class Protocol:
    baseline: str
    alpha: float
    seeds: tuple[int, ...]
    arms: tuple[str, ...]
    primary: tuple[Outcome, ...]
    slopes: tuple[Outcome, ...]

    @property
    def directional(self) -> list[Outcome]:
        """One Holm family: every predicted direction, of final values and of slopes."""
        return [o for o in (*self.primary, *self.slopes) if o.predicts is not None]

    @property
    def equivalence(self) -> list[Outcome]:
        """The other Holm family: every equivalence claim."""
        return [o for o in self.primary if o.margin is not None]

    def off_protocol(self, arm: str, seed: Any) -> Optional[str]:
        """Why a run is outside the seed plan, so that no test may use it (None when it is in the plan)."""
        if arm not in self.arms:
            return f"arm {arm!r} is not in the spec"
        if seed not in self.seeds:
            return f"seed {seed} is not in the spec's seeds"
        return None


def parse_protocol(raw: Any, arms: Sequence[str], seeds: Sequence[int], where: str) -> Protocol:
    """A spec's `protocol:` checked against its arms and seeds; errors name the key and what is valid."""
    body = mapping(raw, where, PROTOCOL_KEYS)
    baseline = body.get("baseline")
    if baseline not in arms:
        raise ExperimentError(f"{where}.baseline={baseline!r} must name the arm every claim is made against "
                              f"(arms: {list(arms)})")
    if len(set(seeds)) < 2:
        raise ExperimentError(f"{where}: seeds={list(seeds)}: a protocol needs at least 2 seeds per arm (its "
                              "tests need a seed-to-seed variance on each side)")
    others = tuple(a for a in arms if a != baseline)
    if not others:
        raise ExperimentError(f"{where}: the spec has no arm besides the baseline {baseline!r} to make claims of")
    alpha = body.get("alpha", 0.05)
    if not is_number(alpha) or not 0 < alpha < 0.5:
        raise ExperimentError(f"{where}.alpha={alpha!r} must be a number in (0, 0.5) (TOST reads a 1 - 2 alpha "
                              "interval)")
    primary = mapping(body.get("primary"), f"{where}.primary")
    if not primary:
        raise ExperimentError(f"{where}.primary must map at least one metric key (e.g. jump/zeta_L) to its claim")
    return Protocol(
        baseline=baseline, alpha=float(alpha), seeds=tuple(seeds), arms=tuple(arms),
        primary=tuple(primary_outcome(metric, o, others, f"{where}.primary.{metric}") for metric, o in primary.items()),
        slopes=tuple(slope_outcome(metric, o, others, f"{where}.slopes.{metric}")
                     for metric, o in mapping(body.get("slopes", {}), f"{where}.slopes").items()))


def primary_outcome(metric: str, raw: Any, others: tuple[str, ...], where: str) -> Outcome:
    """`{predicts: lower|higher|differs}` or `{equivalent_within: margin}`, with optional `arms` and `paired`."""
    body = mapping(raw, where, PRIMARY_KEYS)
    if ("predicts" in body) == ("equivalent_within" in body):
        raise ExperimentError(f"{where}: give exactly one of `predicts` ({', '.join(PREDICTIONS)}) or "
                              "`equivalent_within` (a margin > 0)")
    arms = claim_arms(body, others, where)
    paired = body.get("paired", False)
    if not isinstance(paired, bool):
        raise ExperimentError(f"{where}.paired={paired!r} must be true (paired by seed) or false (Welch, the default)")
    if "predicts" in body:
        return Outcome(metric, arms, predicts=prediction(body["predicts"], where), paired=paired)
    margin = body["equivalent_within"]
    if not is_number(margin) or not margin > 0:
        raise ExperimentError(f"{where}.equivalent_within={margin!r} must be a number > 0 (the margin, in the "
                              "metric's units)")
    return Outcome(metric, arms, margin=float(margin), paired=paired)


def slope_outcome(metric: str, raw: Any, others: tuple[str, ...], where: str) -> Outcome:
    """`{window: [first, last step], predicts: ...}`, with optional `arms`."""
    body = mapping(raw, where, SLOPE_KEYS)
    window = body.get("window")
    if not (isinstance(window, list) and len(window) == 2 and all(is_integer(s) for s in window)
            and 0 <= window[0] < window[1]):
        raise ExperimentError(f"{where}.window={window!r} must be [first step, last step], integers with "
                              "0 <= first < last")
    return Outcome(metric, claim_arms(body, others, where), predicts=prediction(body.get("predicts"), where),
                   window=(window[0], window[1]))


def claim_arms(body: dict[str, Any], others: tuple[str, ...], where: str) -> tuple[str, ...]:
    arms = body.get("arms", list(others))
    if not isinstance(arms, list) or not arms or not set(arms) <= set(others):
        raise ExperimentError(f"{where}.arms={arms!r} must be a non-empty list of arms other than the baseline "
                              f"(valid: {list(others)})")
    return tuple(arms)


def prediction(value: Any, where: str) -> str:
    if value not in PREDICTIONS:
        raise ExperimentError(f"{where}.predicts={value!r} must be one of {list(PREDICTIONS)} (arm vs baseline)")
    return value


def mapping(raw: Any, where: str, keys: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """`raw` as a mapping (None as an empty one) whose keys are among `keys`, when given."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ExperimentError(f"{where} must be a mapping" + (f" with keys {list(keys)}" if keys else ""))
    unknown = sorted(str(k) for k in raw if keys is not None and k not in keys)
    if unknown:
        raise ExperimentError(f"{where}: unknown keys {unknown} (valid: {list(keys)})")
    return raw


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
