"""Intervals for evaluation figures: over seeds (Student's t) and for proportions (Wilson).

>>> lo, hi = mean_interval([1.0, 2.0, 3.0])
>>> round(lo, 3), round(hi, 3)
(-0.484, 4.484)
>>> [round(v, 3) for v in wilson(95, 100)]
[0.888, 0.978]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pakit_stream.exceptions import UsageError

__all__ = ["mean_interval", "wilson", "Z95"]

Z95 = 1.959963984540054

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal's)
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """95% confidence interval of the mean of ``values`` (independent runs, e.g. seeds).

    One value gives a zero-width interval: there is nothing to say about its spread.
    """
    n = len(values)
    if n == 0:
        raise UsageError("no values")
    mean = math.fsum(values) / n
    if n == 1 or all(v == values[0] for v in values):
        return mean, mean
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    t = _T95[n - 2] if n - 1 <= len(_T95) else Z95
    half = t * math.sqrt(var / n)
    return mean - half, mean + half


def wilson(successes: float, n: float) -> tuple[float, float]:
    """Wilson's 95% score interval of a proportion ``successes / n`` (``nan`` for ``n = 0``)."""
    if n <= 0:
        return math.nan, math.nan
    p, z2 = successes / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)
