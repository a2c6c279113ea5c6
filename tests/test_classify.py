"""Own-head classification from logits: hand-computed top-1/top-5, per-class recall, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lastvit_eval.errors import InputError
from lastvit_eval.evaluators import classify, get
from lastvit_eval.evaluators.scoring import mean_per_class_recall, topk_hits
from lastvit_eval.stats import bootstrap_metric


def _logits():
    # 7 classes, 4 samples. Row 0: argmax 2. Row 1: label 6 ranked 6th (miss top-5).
    # Row 2: ties between 0 and 3 -> lower index (0) is the prediction. Row 3: label ranked 5th.
    z = np.array(
        [
            [0.0, 1.0, 5.0, 2.0, 0.5, 0.1, 0.2],
            [6.0, 5.0, 4.0, 3.0, 2.0, 0.0, 1.0],
            [3.0, 1.0, 0.0, 3.0, 0.0, 0.0, 0.0],
            [5.0, 4.0, 3.0, 2.0, 0.0, 0.0, 1.0],
        ],
        dtype=np.float32,
    )
    y = np.array([2, 6, 3, 6])
    return z, y


def test_registered():
    c = get("classify")
    assert c is classify.Classify and c.taps == {"logits"} and c.needs == {"labels", "head"}
    assert c.splits == ("test",) and c().metric_info("classify.top1").unit == "percent"


def test_hand_computed():
    z, y = _logits()
    res = classify.evaluate(z, y, test_ids=["a", "b", "c", "d"])
    assert list(res.rows["pred"]) == [2, 0, 0, 0]
    assert list(res.rows["top1"]) == [True, False, False, False]
    # Row 1: order 0,1,2,3,4,6,5 -> label 6 is 6th; row 3: order 0,1,2,3,6 -> label 6 is 5th.
    assert list(res.rows["top5"]) == [True, False, True, True]
    assert res.metrics["classify.top1"].value == pytest.approx(25.0)
    assert res.metrics["classify.top5"].value == pytest.approx(75.0)
    # Per-class recall: class 2 -> 1/1, class 3 -> 0/1, class 6 -> 0/2; mean over present classes = 1/3.
    assert res.metrics["classify.mean_per_class_recall"].value == pytest.approx(100.0 / 3)
    pc = res.tables["per_class"]
    assert list(pc["class"]) == [2, 3, 6] and list(pc["n"]) == [1, 1, 2]
    assert list(pc["top1"]) == pytest.approx([100.0, 0.0, 0.0])
    assert list(res.rows.columns[:2]) == ["image_id", "label"]


def test_metrics_have_cis():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 10)).astype(np.float32)
    y = rng.integers(0, 10, 300)
    res = classify.evaluate(z, y)
    for m in res.metrics.values():
        assert m.ci_low <= m.value <= m.ci_high and m.n == 300


def test_mean_per_class_recall_literal():
    y = np.array([0, 0, 0, 1, 2, 2])
    c = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    assert mean_per_class_recall(y, c) == pytest.approx((2 / 3 + 0 + 1 / 2) / 3)


@pytest.mark.parametrize("k", [1, 5, 9])
def test_topk_hits_matches_stable_sort_with_many_ties(k):
    # Small integer logits: most rows have ties inside and across the top k; reference = stable sort.
    rng = np.random.default_rng(k)
    z = torch.from_numpy(rng.integers(0, 4, (500, 9)).astype(np.float32))
    z[::7] = torch.from_numpy(rng.normal(size=(z[::7].shape)).astype(np.float32))  # and some without ties
    y = torch.from_numpy(rng.integers(0, 9, 500))
    order = torch.sort(z, dim=1, descending=True, stable=True).indices[:, :k]
    pred, top1, topk = topk_hits(z, y, k, chunk=64)
    assert np.array_equal(pred, order[:, 0].numpy())
    assert np.array_equal(top1, (order[:, 0] == y).numpy())
    assert np.array_equal(topk, (order == y[:, None]).any(dim=1).numpy())


def test_mean_per_class_recall_vectorized_rows_and_bootstrap():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 12, (40, 30))  # some rows miss some classes
    c = rng.random((40, 30)) < 0.6
    rows = [mean_per_class_recall(y[i], c[i]) for i in range(40)]
    assert mean_per_class_recall(y, c) == pytest.approx(rows, abs=1e-12)
    assert mean_per_class_recall(y.astype(str), c) == pytest.approx(rows, abs=1e-12)  # non-integer labels
    assert mean_per_class_recall(y * 10**9, c) == pytest.approx(rows, abs=1e-12)  # sparse ids: no huge table
    # The batched bootstrap draws the same resamples as the one-call-per-resample path: same CI.
    a = bootstrap_metric(mean_per_class_recall, y[0], c[0], scale=100.0, vectorized=True)
    b = bootstrap_metric(lambda u, v: mean_per_class_recall(u, v), y[0], c[0], scale=100.0)
    assert (a.value, a.ci_low, a.ci_high) == pytest.approx((b.value, b.ci_low, b.ci_high), abs=1e-9)


@pytest.mark.parametrize(
    "z, y, kw, match",
    [
        (np.zeros((2, 3)), np.array([0, 3]), {}, "outside the 3"),
        (np.zeros((2, 3)), np.array([0, -1]), {}, "negative"),
        (np.array([[0.0, np.nan, 0.0], [0, 0, 0]]), np.array([0, 1]), {}, "non-finite"),
        (np.zeros((2, 3)), np.array([0, 1]), {"num_classes": 4}, "num_classes=4"),
        (np.zeros((0, 3)), np.zeros(0, int), {}, "empty"),
        (np.zeros((2, 3)), np.array([0, 1, 2]), {}, "3 labels for 2"),
    ],
)
def test_bad_inputs(z, y, kw, match):
    with pytest.raises(InputError, match=match):
        classify.evaluate(z, y, **kw)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("row", [0, 7, 70_000])  # the last in a later chunk of the check
def test_feature_check_names_the_first_non_finite_row(value, row):
    from lastvit_eval.evaluators.checks import as_features

    x = np.zeros((70_001, 3), dtype=np.float32)
    x[row, 1] = value
    x[-1, 2] = -float("inf") if row != 70_000 else value  # a later bad row must not be the one named
    with pytest.raises(InputError, match=rf"^feats: non-finite value \(NaN/Inf\) in row {row}$"):
        as_features(x, "feats")


def test_feature_check_accepts_large_finite_values_whose_sum_overflows():
    from lastvit_eval.evaluators.checks import as_features

    x = np.full((1000, 4), 3.0e38, dtype=np.float32)  # finite, but their float32 sum is inf
    assert torch.isinf(torch.from_numpy(x).sum())
    assert as_features(x, "feats").shape == (1000, 4)
