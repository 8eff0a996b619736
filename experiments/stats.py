"""The statistics every experiment report uses: means with t intervals over seeds, Welch differences between
arms (two- or one-sided), paired differences by seed, and for a pre-registered protocol Holm's adjustment,
equivalence by two one-sided tests (TOST, Welch or paired by seed) and per-seed slopes. One confidence level for
the whole report.

Pure functions over lists of floats (non-finite values are dropped: a run that never logged a metric does not
count as a seed for it). scipy and statsmodels compute the distributions and tests; nothing here re-derives them.
"""
from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

LEVEL = 0.95
"""Confidence level of every interval in a report."""


def finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample std, n) over the finite values; std is nan below two values."""
    xs = finite(values)
    if not xs:
        return math.nan, math.nan, 0
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan, len(xs)


def ci_halfwidth(std: float, n: int, level: float = LEVEL) -> float:
    """Half-width of the t confidence interval of a mean over n seeds (nan below two)."""
    return float(stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan


def mean_ci(values: Iterable[float], level: float = LEVEL) -> tuple[float, float, int]:
    """(mean, half-width of its t interval, n) over the finite values; half-width nan below two."""
    mean, std, n = mean_std(values)
    return mean, ci_halfwidth(std, n, level), n


@dataclass(frozen=True)
class Difference:
    """arm − baseline (or the mean paired difference): its confidence interval and the t-test p-value."""

    diff: float
    low: float
    high: float
    p: float

    @property
    def within_noise(self) -> bool:
        """p ≥ 1 − LEVEL: no difference shown. Not evidence of equivalence (that needs an equivalence test)."""
        return not self.p < 1 - LEVEL


def welch(arm: Iterable[float], baseline: Iterable[float], level: float = LEVEL,
          alternative: str = "two-sided") -> Optional[Difference]:
    """Welch's unequal-variance t-test of arm against baseline (None with fewer than two seeds on a side).
    alternative "less" or "greater" tests a predicted direction of arm − baseline; its interval is then the
    one-sided bound (−inf or +inf on the other side)."""
    a, b = finite(arm), finite(baseline)
    if len(a) < 2 or len(b) < 2:
        return None
    with warnings.catch_warnings():  # identical seeds: scipy warns and answers nan, reported as such
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_ind(a, b, equal_var=False, alternative=alternative)
    ci = test.confidence_interval(level)
    return Difference(statistics.fmean(a) - statistics.fmean(b), float(ci.low), float(ci.high), float(test.pvalue))


def paired(differences: Iterable[float], level: float = LEVEL, alternative: str = "two-sided") -> Optional[Difference]:
    """Mean of paired (by seed) differences with its t interval and the one-sample t-test p-value (None below
    two pairs). alternative "less" or "greater" tests a predicted direction, with the one-sided bound."""
    xs = finite(differences)
    if len(xs) < 2:
        return None
    with warnings.catch_warnings():  # identical differences: scipy warns and answers nan, reported as such
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_1samp(xs, 0.0, alternative=alternative)
    ci = test.confidence_interval(level)
    return Difference(statistics.fmean(xs), float(ci.low), float(ci.high), float(test.pvalue))


def tost(arm: Iterable[float], baseline: Iterable[float], margin: float, alpha: float) -> Optional[Difference]:
    """Equivalence of arm and baseline within ±margin by two one-sided Welch tests: p is the larger of their
    p-values, and the interval the 1 − 2 alpha Welch one, which lies inside ±margin exactly when p < alpha.
    "Within noise" is no evidence of equivalence; this is. None with fewer than two seeds on a side."""
    a, b = finite(arm), finite(baseline)
    interval = welch(a, b, level=1 - 2 * alpha)
    if interval is None:
        return None
    with warnings.catch_warnings():  # identical seeds: no variance, p is nan, reported as such
        warnings.simplefilter("ignore", RuntimeWarning)
        p = ttost_ind(a, b, -margin, margin, usevar="unequal")[0]
    return Difference(interval.diff, interval.low, interval.high, float(p))


def tost_paired(arm: Sequence[float], baseline: Sequence[float], margin: float,
                alpha: float) -> Optional[Difference]:
    """Equivalence within ±margin of arm and baseline paired by seed (arm[i] and baseline[i] share a seed): two
    one-sided paired t-tests. For arms identical up to a branching step, pairing removes the seed-to-seed spread
    they share, which an unpaired test would count as noise. A pair with a non-finite side is dropped; None below
    two pairs."""
    pairs = [(a, b) for a, b in zip(arm, baseline, strict=True) if math.isfinite(a) and math.isfinite(b)]
    interval = paired([a - b for a, b in pairs], level=1 - 2 * alpha)
    if interval is None:
        return None
    with warnings.catch_warnings():  # identical differences: no variance, p is nan, reported as such
        warnings.simplefilter("ignore", RuntimeWarning)
        p = ttost_paired(np.array([a for a, _ in pairs]), np.array([b for _, b in pairs]), -margin, margin)[0]
    return Difference(interval.diff, interval.low, interval.high, float(p))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values of one family of claims. A claim no test could be run on (p nan) counts as p = 1,
    so the family keeps the size the protocol declared and missing runs never make the correction milder."""
    if not pvalues:
        return []
    return [float(p) for p in multipletests([1.0 if math.isnan(p) else p for p in pvalues], method="holm")[1]]


def slope(steps: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of values against steps over the finite values (nan below two distinct steps): one
    seed's rate of change, so that seeds, not logged steps, are the units a test counts."""
    points = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
    if len({s for s, _ in points}) < 2:
        return math.nan
    xs, ys = zip(*points)
    return float(stats.linregress(xs, ys).slope)
