"""The confidence intervals against scipy.stats, the reference they stand in for (lastvit_eval/stats.py
writes them out only to keep scipy.stats' import off every command's start-up)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sps

from lastvit_eval.stats import bootstrap_metric, proportion, wilson_interval


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 50, 299, 1000, 50_000])
def test_wilson_matches_scipy_binomtest_for_every_k(n):
    ks = range(n + 1) if n <= 1000 else [0, 1, 2, 17, n // 3, n // 2, n - 1, n]
    for k in ks:
        ref = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = wilson_interval(k, n)
        assert lo == pytest.approx(ref.low, rel=1e-12, abs=1e-15), (k, n)
        assert hi == pytest.approx(ref.high, rel=1e-12, abs=1e-15), (k, n)


def test_proportion_reports_percentages_and_other_methods_go_to_scipy():
    x = np.array([True] * 37 + [False] * 63)
    m = proportion(x)
    ref = sps.binomtest(37, 100).proportion_ci(method="wilson")
    assert (m.value, m.n, m.ci_method) == (37.0, 100, "wilson")
    assert m.ci_low == pytest.approx(100 * ref.low, rel=1e-12) and m.ci_high == pytest.approx(100 * ref.high, rel=1e-12)
    exact = proportion(x, ci_method="exact")
    ref = sps.binomtest(37, 100).proportion_ci(method="exact")
    assert exact.ci_low == pytest.approx(100 * ref.low, rel=1e-12) and exact.ci_method == "exact"
    assert np.isnan(proportion(np.array([], dtype=bool)).value)


def _scipy_percentile(statistic, samples, vectorized, seed=0, n_resamples=1000):
    n = len(samples[0])
    res = sps.bootstrap(samples, statistic, paired=True, vectorized=vectorized,
                        batch=max(1, 5_000_000 // n) if vectorized else None, n_resamples=n_resamples,
                        confidence_level=0.95, method="percentile", rng=np.random.default_rng(seed))
    return res.confidence_interval


def _ratio_of_sums(a, b, axis=-1):
    return np.sum(a, axis=axis) / np.sum(b, axis=axis)


@pytest.mark.parametrize("vectorized", [False, True])
def test_bootstrap_matches_scipy_one_sample(vectorized):
    x = np.random.default_rng(3).normal(size=257)
    ref = _scipy_percentile(np.mean, (x,), vectorized)
    m = bootstrap_metric(np.mean, x, vectorized=vectorized)
    assert m.value == pytest.approx(x.mean())
    assert (m.ci_low, m.ci_high) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert m.ci_method == "bootstrap-percentile" and m.n == 257


def test_bootstrap_matches_scipy_paired_and_batched():
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 50, 6000).astype(float), rng.integers(50, 100, 6000).astype(float)
    # 6000 samples: batches of 833 resamples, so the generator is drawn from in several pieces
    ref = _scipy_percentile(_ratio_of_sums, (a, b), True, seed=7, n_resamples=2000)
    m = bootstrap_metric(_ratio_of_sums, a, b, vectorized=True, seed=7, n_resamples=2000, scale=100.0)
    assert (m.ci_low, m.ci_high) == pytest.approx((100 * ref.low, 100 * ref.high), rel=1e-12)
    # a non-vectorized statistic of two paired samples
    ref = _scipy_percentile(lambda u, v: np.mean(u > v), (a[:300], b[:300] - 50), False, seed=2)
    m = bootstrap_metric(lambda u, v: np.mean(u > v), a[:300], b[:300] - 50, seed=2)
    assert (m.ci_low, m.ci_high) == pytest.approx((ref.low, ref.high), rel=1e-12)


def test_a_single_sample_has_no_interval():
    m = bootstrap_metric(np.mean, np.array([2.0]), scale=100.0)
    assert (m.value, m.ci_low, m.ci_high, m.n) == (200.0, None, None, 1)


def test_the_cli_does_not_import_scipy_stats_at_start():
    code = ("import sys, lastvit_eval.cli, lastvit_eval.evaluators as e; e.available(); "
            "print('scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
