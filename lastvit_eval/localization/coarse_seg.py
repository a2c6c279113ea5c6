"""Coarse foreground segmentation from patch scores, scored against VOC12 class masks as fg/bg IoU.

Per image: the patch scores (cosine of each patch token with the pooled token) are upsampled to the
label map's size with torch's bilinear interpolation, align_corners=False (the grid's cell centres sit
at patch centres), thresholded per image (`mean` of the upsampled map, `otsu`, or a fixed float;
foreground = score > threshold), and compared with the ground truth: classes 1..20 foreground, 0
background, 255 ignored (not counted in either class). Intersections and unions of both classes are
summed over images before dividing (dataset-level IoU, as VOC's mIoU), and mIoU = mean(fg IoU, bg IoU).

Two frames: `labels_to_crop` pushes the label map through the model's Resize + CenterCrop (nearest,
torchvision) so it lines up with a crop-fed score map; `full_res_score_map` handles an image fed at full
size, padded bottom/right to a multiple of the patch size (the padding is cut off after upsampling).
"""

from __future__ import annotations

import numbers
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..data.voc import IGNORE_INDEX
from ..result import Metric
from ..stats import bootstrap_metric
from .boxes_from_maps import as_grid

Threshold = Literal["mean", "otsu"] | float

try:  # scikit-image's Otsu when present; the same histogram formula below otherwise
    from skimage.filters import threshold_otsu as _skimage_otsu
except ImportError:  # pragma: no cover - depends on the environment
    _skimage_otsu = None

OTSU_IMPL = "skimage" if _skimage_otsu is not None else "own"


def upsample_scores(scores: np.ndarray, size: tuple[int, int], grid: tuple[int, int] | None = None) -> np.ndarray:
    """Patch scores [gh, gw] (or flat) -> float32 [h, w] by bilinear interpolation, align_corners=False."""
    g = as_grid(np.asarray(scores, dtype=np.float32), grid)
    t = torch.from_numpy(np.ascontiguousarray(g))[None, None]
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


def full_res_score_map(scores: np.ndarray, grid: tuple[int, int], patch: int,
                       image_size: tuple[int, int]) -> np.ndarray:
    """Score map of an image fed at full size, padded bottom/right: upsample to the padded size, cut to (h, w)."""
    w, h = image_size
    full = upsample_scores(scores, (grid[0] * patch, grid[1] * patch), grid)
    if full.shape[0] < h or full.shape[1] < w:
        raise ValueError(f"a {grid[0]}x{grid[1]} grid of {patch}-pixel patches does not cover a {w}x{h} image")
    return full[:h, :w]


def labels_to_crop(labels: np.ndarray, resize: int, crop: int, kind: str = "resize-crop") -> np.ndarray:
    """Label map through Resize(resize, short side) + CenterCrop(crop), nearest (torchvision NEAREST_EXACT);
    kind `squash`: resized to crop x crop (geometry.input_resize), nothing cropped.

    Pixels the crop pads (crop larger than the resized image) become ignore (255).
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from ..geometry import input_resize

    labels = np.asarray(labels, dtype=np.uint8)
    nw, nh = input_resize(labels.shape[1], labels.shape[0], resize, crop, kind)
    t = torch.from_numpy(labels)[None]
    t = TF.resize(t, [nh, nw], interpolation=InterpolationMode.NEAREST_EXACT)
    pad = (t.shape[-1] < crop) or (t.shape[-2] < crop)
    if pad:
        t = torch.where(t == 0, torch.full_like(t, 254), t)  # keep true zeros apart from padding zeros
    out = TF.center_crop(t, [crop])[0].numpy().copy()
    if pad:
        out[out == 0] = IGNORE_INDEX
        out[out == 254] = 0
    return out


def otsu_threshold(values: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold on a 256-bin histogram (foreground: values > threshold); scikit-image's when installed.

    Between-class variance w0 * w1 * (m0 - m1)^2 for each cut between bins, the cut at the first maximum,
    the threshold at that bin's centre: the formula scikit-image's `threshold_otsu` uses.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError("Otsu needs a non-empty, finite map")
    if v.min() == v.max():
        return float(v.min())
    if _skimage_otsu is not None:
        return float(_skimage_otsu(v, nbins=nbins))
    hist, edges = np.histogram(v, bins=nbins, range=(v.min(), v.max()))
    centers = (edges[:-1] + edges[1:]) / 2
    hist = hist.astype(np.float64)
    w0 = np.cumsum(hist)
    w1 = np.cumsum(hist[::-1])[::-1]
    m0 = np.cumsum(hist * centers) / np.where(w0 > 0, w0, 1)
    m1 = (np.cumsum((hist * centers)[::-1]) / np.where(w1[::-1] > 0, w1[::-1], 1))[::-1]
    between = w0[:-1] * w1[1:] * (m0[:-1] - m1[1:]) ** 2
    return float(centers[int(np.argmax(between))])


def threshold_value(score_map: np.ndarray, method: Threshold = "mean") -> float:
    """The per-image threshold: the map's mean, Otsu's, or a fixed number (foreground: score > threshold)."""
    if isinstance(method, numbers.Real) and not isinstance(method, bool):
        return float(method)
    if method == "mean":
        return float(np.mean(score_map, dtype=np.float64))
    if method == "otsu":
        return otsu_threshold(score_map)
    raise ValueError(f"unknown threshold {method!r}; use 'mean', 'otsu' or a number")


def fg_bg_counts(pred_fg: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """int64 [4]: fg intersection, fg union, bg intersection, bg union over the non-ignored pixels."""
    pred_fg = np.asarray(pred_fg, dtype=bool)
    labels = np.asarray(labels)
    if pred_fg.shape != labels.shape:
        raise ValueError(f"prediction {pred_fg.shape} and labels {labels.shape} differ in size")
    valid = labels != IGNORE_INDEX
    gt_fg = valid & (labels != 0)
    gt_bg = valid & (labels == 0)
    p_fg = valid & pred_fg
    p_bg = valid & ~pred_fg
    return np.array([(p_fg & gt_fg).sum(), (p_fg | gt_fg).sum(), (p_bg & gt_bg).sum(), (p_bg | gt_bg).sum()],
                    dtype=np.int64)


def coarse_seg_counts(scores: np.ndarray, labels: np.ndarray, threshold: Threshold = "mean",
                      grid: tuple[int, int] | None = None) -> np.ndarray:
    """One image: upsample its patch scores to the label map, threshold, count (see fg_bg_counts)."""
    score_map = upsample_scores(scores, labels.shape, grid)
    return fg_bg_counts(score_map > threshold_value(score_map, threshold), labels)


def _ratio(num: np.ndarray, den: np.ndarray, axis: int = -1) -> np.ndarray:
    d = np.sum(den, axis=axis)
    return np.sum(num, axis=axis) / np.where(d > 0, d, np.nan)


def per_image_iou(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image fg IoU and bg IoU (percent; NaN where that side's union is 0) from counts [n, 4]."""
    c = np.asarray(counts, dtype=np.float64).reshape(-1, 4)
    return 100.0 * _ratio(c[:, [0]], c[:, [1]], axis=1), 100.0 * _ratio(c[:, [2]], c[:, [3]], axis=1)


def seg_iou_metrics(counts: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> dict[str, Metric]:
    """Dataset-level fg IoU, bg IoU and their mean (percent) from per-image counts [n, 4], bootstrap CIs over images."""
    c = np.asarray(counts, dtype=np.float64).reshape(-1, 4)
    fi, fu, bi, bu = c.T

    def fg(fi, fu, bi, bu, axis=-1):
        return _ratio(fi, fu, axis)

    def bg(fi, fu, bi, bu, axis=-1):
        return _ratio(bi, bu, axis)

    def miou(fi, fu, bi, bu, axis=-1):
        return (_ratio(fi, fu, axis) + _ratio(bi, bu, axis)) / 2

    return {name: bootstrap_metric(f, fi, fu, bi, bu, n_resamples=n_resamples, seed=seed, scale=100.0,
                                   vectorized=True)
            for name, f in (("fg_iou", fg), ("bg_iou", bg), ("miou", miou))}
