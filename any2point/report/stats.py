"""Student-t intervals for the report: a group's mean, and the difference between two groups.

Sample standard deviations (ddof 1); the t quantile comes from ``scipy.stats.t``. With fewer
than two values (two pairs, or two runs on each side for Welch) there is no interval: the
fields are ``None``, never NaN, and the tables say "no CI".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from scipy import stats

__all__ = ["Interval", "mean_interval", "paired_difference", "welch_difference", "LEVEL"]

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """``mean`` of ``n`` values (or of a difference), their sample ``std`` (not for Welch), the
    two-sided confidence bounds and the t distribution's degrees of freedom. ``n`` counts the
    values (pairs for a paired difference, both groups' runs for Welch)."""

    mean: float
    n: int
    std: float | None = None
    low: float | None = None
    high: float | None = None
    df: float | None = None
    method: str = "mean"  # mean | paired | welch

    @property
    def has_ci(self) -> bool:
        return self.low is not None


def _t(df: float, level: float) -> float:
    return float(stats.t.ppf(0.5 + level / 2.0, df))


def mean_interval(values: Sequence[float], level: float = LEVEL, method: str = "mean") -> Interval:
    """Mean ± t(n-1) * s / sqrt(n); n = 1 gives the mean alone."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, 1, method=method)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t(n - 1, level) * std / math.sqrt(n)
    return Interval(mean, n, std, mean - half, mean + half, float(n - 1), method)


def paired_difference(group: Mapping[object, float], baseline: Mapping[object, float],
                      level: float = LEVEL) -> Interval:
    """``group - baseline`` over the keys (seed, fold) both have: the interval of the mean
    paired difference. The key sets must be equal."""
    if set(group) != set(baseline):
        raise ValueError(f"paired runs need the same seeds/folds, got {sorted(map(str, group))} "
                         f"and {sorted(map(str, baseline))}")
    return mean_interval([group[k] - baseline[k] for k in sorted(group, key=str)], level, "paired")


def welch_difference(group: Sequence[float], baseline: Sequence[float], level: float = LEVEL) -> Interval:
    """``mean(group) - mean(baseline)`` with Welch's interval (unequal variances,
    Welch-Satterthwaite degrees of freedom); needs two runs on each side."""
    a, b = mean_interval(group), mean_interval(baseline)
    diff = a.mean - b.mean
    n = a.n + b.n
    if a.std is None or b.std is None:
        return Interval(diff, n, method="welch")
    va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
    se = math.sqrt(va + vb)
    if se == 0.0:  # both groups constant: the difference is exact
        return Interval(diff, n, None, diff, diff, None, "welch")
    df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    half = _t(df, level) * se
    return Interval(diff, n, None, diff - half, diff + half, df, "welch")
