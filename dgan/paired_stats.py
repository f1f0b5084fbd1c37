"""Paired differences: the mean, its standard error and a 95% t interval, for comparisons of a few GAN seeds."""

from __future__ import annotations

import math
import statistics

# Student's t, 0.975 quantile, for 1-30 degrees of freedom; beyond, 1.96 + 2.4 / df is within 0.002.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    if df < 1:
        raise ValueError("a confidence interval needs at least 2 pairs")
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def mean_se_ci95(diffs: list[float]) -> tuple[float, float, tuple[float, float]]:
    """Mean, standard error and 95% interval of paired differences; NaN where too few (none, or one pair)."""
    nan = math.nan
    if not diffs:
        return nan, nan, (nan, nan)
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, nan, (nan, nan)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    half = t975(len(diffs) - 1) * se
    return mean, se, (mean - half, mean + half)
