"""Coarse segmentation: interpolation, thresholds and fg/bg IoU counts against per-pixel brute force written here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lastvit_eval.geometry import crop_offsets, resized_size
from lastvit_eval.localization.coarse_seg import (
    coarse_seg_counts,
    fg_bg_counts,
    full_res_score_map,
    labels_to_crop,
    otsu_threshold,
    seg_iou_metrics,
    threshold_value,
    upsample_scores,
)


def bilinear_reference(grid: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear, align_corners=False: output pixel centre (i + 0.5) maps to input coordinate
    (i + 0.5) * in / out - 0.5, clamped at 0; neighbours clamped at the border."""
    gh, gw = grid.shape
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        sy = max((i + 0.5) * gh / out_h - 0.5, 0.0)
        y0 = min(int(math.floor(sy)), gh - 1)
        y1, fy = min(y0 + 1, gh - 1), sy - y0
        for j in range(out_w):
            sx = max((j + 0.5) * gw / out_w - 0.5, 0.0)
            x0 = min(int(math.floor(sx)), gw - 1)
            x1, fx = min(x0 + 1, gw - 1), sx - x0
            top = grid[y0, x0] * (1 - fx) + grid[y0, x1] * fx
            bottom = grid[y1, x0] * (1 - fx) + grid[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


@pytest.mark.parametrize("grid, size", [((5, 7), (23, 31)), ((14, 14), (224, 224)), ((4, 4), (3, 9))])
def test_upsampling_is_bilinear_align_corners_false(grid, size):
    rng = np.random.default_rng(sum(size))
    g = rng.normal(size=grid)
    np.testing.assert_allclose(upsample_scores(g, size), bilinear_reference(g, *size), atol=1e-5)
    np.testing.assert_allclose(upsample_scores(g.reshape(-1), size, grid=grid), bilinear_reference(g, *size),
                               atol=1e-5)


def test_full_res_map_cuts_the_padding():
    g = np.arange(12, dtype=float).reshape(3, 4)
    full = full_res_score_map(g, (3, 4), 8, (29, 20))
    assert full.shape == (20, 29)
    np.testing.assert_allclose(full, bilinear_reference(g, 24, 32)[:20, :29], atol=1e-5)
    with pytest.raises(ValueError, match="cover"):
        full_res_score_map(g, (3, 4), 8, (40, 20))


def otsu_brute_force(values: np.ndarray, nbins: int = 256) -> float:
    """Every cut between histogram bins; between-class variance of the bin centres; the first best cut."""
    lo, hi = float(values.min()), float(values.max())
    width = (hi - lo) / nbins
    centers = [lo + (b + 0.5) * width for b in range(nbins)]
    bins = [min(int((v - lo) / width), nbins - 1) for v in values]  # last edge inclusive, as np.histogram
    best, best_t = -1.0, None
    for t in range(nbins - 1):
        c0 = [centers[b] for b in bins if b <= t]
        c1 = [centers[b] for b in bins if b > t]
        if not c0 or not c1:
            var = 0.0
        else:
            var = len(c0) * len(c1) * (sum(c0) / len(c0) - sum(c1) / len(c1)) ** 2
        if var > best * (1 + 1e-12):
            best, best_t = var, t
    return centers[best_t]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_otsu_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(0.1, 0.05, 300 + 100 * seed), rng.normal(0.6, 0.1, 200)])
    t = otsu_threshold(values)
    assert t == pytest.approx(otsu_brute_force(values), abs=1e-9)
    assert 0.2 < t < 0.5  # between the modes
    assert otsu_threshold(np.full(10, 0.3)) == pytest.approx(0.3)


def brute_counts(pred_fg: np.ndarray, labels: np.ndarray) -> list[int]:
    fi = fu = bi = bu = 0
    for p, lab in zip(pred_fg.reshape(-1).tolist(), labels.reshape(-1).tolist(), strict=True):
        if lab == 255:
            continue
        g = lab != 0
        fi += p and g
        fu += p or g
        bi += (not p) and (not g)
        bu += (not p) or (not g)
    return [fi, fu, bi, bu]


def random_labels(rng, h: int, w: int) -> np.ndarray:
    lab = np.zeros((h, w), dtype=np.uint8)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    lab[y0:y0 + h // 2, x0:x0 + w // 2] = rng.integers(1, 21)
    lab[rng.random((h, w)) < 0.05] = 255
    return lab


@pytest.mark.parametrize("threshold", ["mean", "otsu", 0.25])
def test_counts_match_per_pixel_brute_force(threshold):
    rng = np.random.default_rng(7)
    total = np.zeros(4, dtype=np.int64)
    ref_total = np.zeros(4)
    for _ in range(3):
        h, w = rng.integers(20, 40, size=2)
        scores = rng.random((5, 6))
        labels = random_labels(rng, h, w)
        counts = coarse_seg_counts(scores, labels, threshold)
        smap = bilinear_reference(scores, h, w)
        t = {"mean": smap.mean(), "otsu": otsu_brute_force(smap.reshape(-1)), 0.25: 0.25}[threshold]
        ref = brute_counts(smap > t, labels)
        # float32 interpolation may move a pixel that sits on the threshold; allow one pixel per count
        np.testing.assert_allclose(counts, ref, atol=1)
        total += counts
        ref_total += ref
    m = seg_iou_metrics(total[None], n_resamples=50)  # one "image" holding the sums: plain ratios
    assert m["fg_iou"].value == pytest.approx(100 * total[0] / total[1])
    assert m["bg_iou"].value == pytest.approx(100 * total[2] / total[3])
    assert m["miou"].value == pytest.approx((m["fg_iou"].value + m["bg_iou"].value) / 2)


def test_fg_bg_counts_exact_and_ignore():
    rng = np.random.default_rng(3)
    labels = random_labels(rng, 17, 23)
    pred = rng.random((17, 23)) < 0.4
    assert fg_bg_counts(pred, labels).tolist() == brute_counts(pred, labels)
    assert fg_bg_counts(np.ones((2, 2), bool), np.full((2, 2), 255, np.uint8)).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        fg_bg_counts(np.ones((2, 3), bool), np.zeros((3, 2), np.uint8))


def test_threshold_kinds():
    m = np.array([[0.0, 1.0], [2.0, 5.0]])
    assert threshold_value(m, "mean") == 2.0
    assert threshold_value(m, np.int64(1)) == 1.0 and threshold_value(m, 0.5) == 0.5
    with pytest.raises(ValueError, match="unknown threshold"):
        threshold_value(m, "median")


def test_iou_is_accumulated_over_images_not_averaged():
    counts = np.array([[10, 20, 5, 10], [0, 80, 45, 90]])
    m = seg_iou_metrics(counts, n_resamples=200)
    assert m["fg_iou"].value == pytest.approx(10.0)  # 10 / 100, not mean(50%, 0%)
    assert m["bg_iou"].value == pytest.approx(50.0)
    assert m["miou"].value == pytest.approx(30.0)
    assert m["miou"].n == 2 and m["miou"].ci_low <= m["miou"].value <= m["miou"].ci_high


@pytest.mark.parametrize("size, resize, crop", [((50, 37), 32, 28), ((37, 61), 40, 32), ((30, 20), 16, 24)])
def test_labels_to_crop_is_nearest_at_pixel_centres(size, resize, crop):
    w, h = size
    rng = np.random.default_rng(w)
    labels = rng.integers(0, 21, size=(h, w)).astype(np.uint8)
    labels[rng.random((h, w)) < 0.1] = 255
    nw, nh = resized_size(w, h, resize)
    left, top = crop_offsets(nw, nh, crop)
    expected = np.full((crop, crop), 255, dtype=np.uint8)  # outside the resized image: padding, ignored
    for i in range(crop):
        for j in range(crop):
            y, x = i + top, j + left
            if 0 <= y < nh and 0 <= x < nw:
                expected[i, j] = labels[int((y + 0.5) * h / nh), int((x + 0.5) * w / nw)]
    np.testing.assert_array_equal(labels_to_crop(labels, resize, crop), expected)
