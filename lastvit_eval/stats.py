"""Confidence intervals: Wilson's score interval for binomial proportions, a paired percentile bootstrap
otherwise.

Both are written out here rather than called from `scipy.stats`: importing `scipy.stats` costs about
0.4-0.5 s per process (mostly docstring processing for its distributions), which is most of what a
command on stored features costs (`results/bench_chain.md`). Both are checked against `scipy.stats`
(`binomtest(...).proportion_ci(method="wilson")` and `bootstrap(..., paired=True,
method="percentile")`, same generator, same batches: equal to 1e-12) in `tests/test_stats.py`. Any
other interval method is delegated to `scipy.stats`, imported only then.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import numpy as np

from .result import Metric

_Z95 = NormalDist().inv_cdf(0.975)  # two-sided 95%


def wilson_interval(k: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson's score interval for k successes in n trials (Wilson 1927; Newcombe 1998, method 3):
    (2k + z^2 -/+ z sqrt(z^2 + 4k(n-k)/n)) / (2(n + z^2)), clipped to [0, 1]."""
    root = z * math.sqrt(z * z + 4.0 * k * (n - k) / n)
    denom = 2.0 * (n + z * z)
    return max(0.0, (2.0 * k + z * z - root) / denom), min(1.0, (2.0 * k + z * z + root) / denom)


def proportion(successes: np.ndarray, ci_method: str = "wilson") -> Metric:
    """Percentage of True in a boolean vector with a 95% binomial CI (Wilson by default)."""
    successes = np.asarray(successes, dtype=bool)
    n = int(successes.size)
    if n == 0:
        return Metric(value=float("nan"), n=0)
    k = int(successes.sum())
    if ci_method == "wilson":
        low, high = wilson_interval(k, n)
    else:
        from scipy import stats

        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method=ci_method)
        low, high = ci.low, ci.high
    return Metric(value=100.0 * k / n, ci_low=100.0 * low, ci_high=100.0 * high, n=n, ci_method=ci_method)


def bootstrap_distribution(
    statistic: Callable[..., float],
    samples: tuple[np.ndarray, ...],
    n_resamples: int,
    rng: np.random.Generator,
    vectorized: bool,
) -> np.ndarray:
    """The statistic on `n_resamples` paired resamples (the same drawn indices for every sample).

    Indices are drawn as `scipy.stats.bootstrap` draws them (`rng.integers(0, n, (batch, n))`, in
    batches of at most about 5M elements when `vectorized`, all at once otherwise), so that with the
    same generator the two give the same distribution; `vectorized` statistics take 2-D (resamples x
    samples) arrays and an `axis` keyword.
    """
    arrays = tuple(np.asarray(s) for s in samples)
    n = arrays[0].shape[-1]
    batch = max(1, 5_000_000 // n) if vectorized else n_resamples
    parts = []
    for start in range(0, n_resamples, batch):
        idx = rng.integers(0, n, (min(batch, n_resamples - start), n))
        if vectorized:
            parts.append(np.asarray(statistic(*(a[..., idx] for a in arrays), axis=-1), dtype=float))
        else:
            parts.append(np.array([statistic(*(a[..., row] for a in arrays)) for row in idx], dtype=float))
    return np.concatenate(parts, axis=-1)


def bootstrap_metric(
    statistic: Callable[..., float],
    *samples: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    scale: float = 1.0,
    vectorized: bool = False,
) -> Metric:
    """Statistic over per-sample arrays with a 95% percentile bootstrap CI over samples (paired).

    `vectorized`: the statistic accepts 2-D (resamples x samples) arrays and an `axis` keyword; it is
    then called on batches of resamples (at most about 5M elements each) instead of once per resample.
    The interval is the 2.5th and 97.5th percentile (linear interpolation) of the bootstrap distribution.
    """
    n = int(len(samples[0]))
    value = float(statistic(*samples))
    if n < 2:
        return Metric(value=scale * value, n=n)
    theta = bootstrap_distribution(statistic, samples, n_resamples, np.random.default_rng(seed), vectorized)
    lo, hi = np.quantile(theta, [0.025, 0.975], axis=-1)
    return Metric(value=scale * value, ci_low=scale * float(lo), ci_high=scale * float(hi), n=n,
                  ci_method="bootstrap-percentile")
