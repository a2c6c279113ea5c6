"""IoU and CorLoc against a brute-force pixel-mask reference written here (no box arithmetic)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lastvit_eval.localization.corloc import box_iou, corloc

CANVAS = 48


def pixel_mask(box, scale: int = 1) -> np.ndarray:
    """Pixels (on a canvas `scale` times finer) whose square lies inside the pixel-edge box; exact for
    coordinates that are multiples of 1/scale."""
    x0, y0, x1, y1 = (round(v * scale) for v in box)
    m = np.zeros((CANVAS * scale, CANVAS * scale), dtype=bool)
    for r in range(CANVAS * scale):
        for c in range(CANVAS * scale):
            m[r, c] = x0 <= c and c + 1 <= x1 and y0 <= r and r + 1 <= y1
    return m


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def random_box(rng, scale: int = 1):
    x0, x1 = sorted(rng.choice(np.arange(CANVAS * scale + 1), 2, replace=False) / scale)
    y0, y1 = sorted(rng.choice(np.arange(CANVAS * scale + 1), 2, replace=False) / scale)
    return (x0, y0, x1, y1)


@pytest.mark.parametrize("seed, scale", [(0, 1), (1, 1), (2, 2)])
def test_iou_matches_pixel_masks(seed, scale):
    rng = np.random.default_rng(seed)
    for _ in range(6):
        pred = random_box(rng, scale)
        gts = [random_box(rng, scale) for _ in range(3)]
        # overlap by construction for some: a shifted copy of the prediction
        gts.append((pred[0] + 1, pred[1], min(pred[2] + 1, CANVAS), pred[3]))
        pm = pixel_mask(pred, scale)
        expected = [mask_iou(pm, pixel_mask(g, scale)) for g in gts]
        np.testing.assert_allclose(box_iou(pred, gts), expected, rtol=0, atol=1e-12)


def test_iou_edge_cases():
    # touching boxes share no pixel (x1 exclusive): IoU 0, not 1/(area) as with a +1 convention
    assert box_iou((0, 0, 10, 10), [(10, 0, 20, 10)])[0] == 0.0
    assert box_iou((0, 0, 10, 10), [(0, 0, 10, 10)])[0] == 1.0
    assert box_iou((3, 3, 3, 8), [(3, 3, 3, 8)])[0] == 0.0  # degenerate boxes: empty union, IoU 0


def test_corloc_against_brute_force():
    rng = np.random.default_rng(3)
    preds, gts, expected = [], [], []
    for _ in range(30):
        pred = random_box(rng)
        g = [random_box(rng) for _ in range(int(rng.integers(1, 4)))]
        if rng.random() < 0.4:  # a near copy, so that hits happen
            g.append((pred[0], pred[1], min(pred[2] + 2, CANVAS), pred[3]))
        pm = pixel_mask(pred)
        expected.append(any(mask_iou(pm, pixel_mask(b)) >= 0.5 for b in g))
        preds.append(pred)
        gts.append(np.array(g))
    res = corloc(preds, gts)
    np.testing.assert_array_equal(res.hit, expected)
    k, n = sum(expected), len(expected)
    assert 0 < k < n
    assert res.metric.value == pytest.approx(100 * k / n) and res.metric.n == n
    ci = stats.binomtest(k, n).proportion_ci(method="wilson")
    assert (res.metric.ci_low, res.metric.ci_high) == pytest.approx((100 * ci.low, 100 * ci.high))


def test_corloc_exact_half_is_a_hit_and_missing_boxes_are_reported():
    gt = np.array([[0, 0, 10, 10]])
    half = (0, 0, 5, 10)  # IoU exactly 0.5
    just_under = (0, 0, 10, 20.0001)  # 100 / 200.001
    res = corloc([half, just_under, None, (0, 0, 4, 4)], [gt, gt, gt, np.zeros((0, 4))])
    np.testing.assert_array_equal(res.hit, [True, False, False, False])
    np.testing.assert_array_equal(res.counted, [True, True, True, False])
    assert res.n_no_box == 1 and res.n_no_gt == 1
    assert res.metric.n == 3 and res.metric.value == pytest.approx(100 / 3)
    rows = res.rows(["a", "b", "c", "d"], [half, just_under, None, (0, 0, 4, 4)])
    assert list(rows["status"]) == ["scored", "scored", "no_box", "no_gt"]
    assert rows["corloc"].tolist() == [True, False, False, False]
    assert rows["iou"].iloc[0] == 0.5 and np.isnan(rows["iou"].iloc[2])
    with pytest.raises(ValueError):
        corloc([half], [gt, gt])
