"""Confidence intervals: exact where one exists (binomial proportions), scipy's bootstrap otherwise."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats

from .result import Metric


def proportion(successes: np.ndarray, ci_method: str = "wilson") -> Metric:
    """Percentage of True in a boolean vector with a 95% binomial CI (Wilson by default)."""
    successes = np.asarray(successes, dtype=bool)
    n = int(successes.size)
    if n == 0:
        return Metric(value=float("nan"), n=0)
    k = int(successes.sum())
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method=ci_method)
    return Metric(
        value=100.0 * k / n, ci_low=100.0 * ci.low, ci_high=100.0 * ci.high, n=n, ci_method=ci_method
    )


def bootstrap_metric(
    statistic: Callable[..., float],
    *samples: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    scale: float = 1.0,
    vectorized: bool = False,
) -> Metric:
    """Statistic over per-sample arrays with a percentile bootstrap CI over samples (paired).

    `vectorized`: the statistic accepts 2-D (resamples x samples) arrays and an `axis` keyword; it is
    then called on batches of resamples (at most about 5M elements each) instead of once per resample.
    """
    n = int(len(samples[0]))
    value = float(statistic(*samples))
    if n < 2:
        return Metric(value=scale * value, n=n)
    res = stats.bootstrap(
        samples,
        statistic,
        paired=True,
        vectorized=vectorized,
        batch=max(1, 5_000_000 // n) if vectorized else None,
        n_resamples=n_resamples,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    lo, hi = res.confidence_interval
    return Metric(value=scale * value, ci_low=scale * float(lo), ci_high=scale * float(hi), n=n,
                  ci_method="bootstrap-percentile")
