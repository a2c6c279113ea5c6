"""Annotations through the exact resize + center crop of the pixels, onto the patch grid.

Coordinates are continuous pixel-edge coordinates: pixel p spans [p, p + 1). A box (x0, y0, x1, y1)
covers [x0, x1) x [y0, y1) of the original image. Resampling (PIL, torch, align_corners=False) maps an
original coordinate x to x * new_w / w, so a crop pixel belongs to the box when its centre maps inside
the box. Sizes and offsets follow torchvision: the short side becomes `resize`, the long side
int(resize * long / short); the crop offset is int(round((size - crop) / 2)).
Integer arithmetic (fractions) keeps pixel membership exact at ties.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal

import numpy as np

HitRule = Literal["any", "center", "majority"]


def resized_size(w: int, h: int, resize: int) -> tuple[int, int]:
    """Output (w, h) of torchvision's Resize(resize) (short side)."""
    if w <= h:
        return resize, int(resize * h / w)
    return int(resize * w / h), resize


def crop_offsets(w: int, h: int, crop: int) -> tuple[int, int]:
    """(left, top) of torchvision's CenterCrop(crop) on a (w, h) image (crop <= size)."""
    return int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))


def _axis_range(a0: float, a1: float, size: int, new: int, offset: int, crop: int) -> tuple[int, int]:
    """Crop pixel indices [i0, i1) whose centres map inside [a0, a1) along one axis."""
    # pixel i (crop coords) has centre (i + offset + 1/2) * size / new in original coords.
    # i + offset + 1/2 >= a0 * new / size  <=>  i >= ceil(a0 * new / size - offset - 1/2)
    s = Fraction(new, size)
    lo = math.ceil(Fraction(a0) * s - offset - Fraction(1, 2))
    hi = math.ceil(Fraction(a1) * s - offset - Fraction(1, 2))
    return max(lo, 0), min(max(hi, 0), crop)


def box_to_crop_pixels(
    box: tuple[float, float, float, float], w: int, h: int, resize: int, crop: int
) -> tuple[int, int, int, int]:
    """Box in original coords -> crop pixel index ranges (c0, r0, c1, r1), half-open, maybe empty."""
    nw, nh = resized_size(w, h, resize)
    left, top = crop_offsets(nw, nh, crop)
    c0, c1 = _axis_range(box[0], box[2], w, nw, left, crop)
    r0, r1 = _axis_range(box[1], box[3], h, nh, top, crop)
    return c0, r0, c1, r1


def box_to_crop_coords(
    box: tuple[float, float, float, float], w: int, h: int, resize: int, crop: int
) -> tuple[float, float, float, float]:
    """Box in original coords -> continuous coords in the crop (may extend outside [0, crop])."""
    nw, nh = resized_size(w, h, resize)
    left, top = crop_offsets(nw, nh, crop)
    sx, sy = nw / w, nh / h
    return box[0] * sx - left, box[1] * sy - top, box[2] * sx - left, box[3] * sy - top


def boxes_mask(boxes, w: int, h: int, resize: int, crop: int) -> np.ndarray:
    """Union of boxes as a boolean pixel mask [crop, crop] of the cropped image."""
    mask = np.zeros((crop, crop), dtype=bool)
    for box in boxes:
        c0, r0, c1, r1 = box_to_crop_pixels(box, w, h, resize, crop)
        mask[r0:r1, c0:c1] = True
    return mask


def patch_fraction(mask: np.ndarray, patch: int) -> np.ndarray:
    """Fraction of each patch's pixels inside the mask -> [gh, gw]."""
    gh, gw = mask.shape[0] // patch, mask.shape[1] // patch
    m = mask[: gh * patch, : gw * patch].reshape(gh, patch, gw, patch)
    return m.mean(axis=(1, 3))


def patch_targets(
    boxes, w: int, h: int, resize: int, crop: int, patch: int, rule: HitRule = "any", fg_fraction: float = 0.5
) -> np.ndarray:
    """Which patches count as a hit for these boxes, flattened row-major -> bool [gh * gw].

    any: the patch overlaps the box (the paper's rule); majority: more than `fg_fraction` (default half)
    of its pixels are inside; center: the patch centre point lies inside the (continuous) box.
    """
    if rule == "center":
        g = crop // patch
        centres = (np.arange(g) + 0.5) * patch
        out = np.zeros((g, g), dtype=bool)
        for box in boxes:
            x0, y0, x1, y1 = box_to_crop_coords(box, w, h, resize, crop)
            inx = (centres >= x0) & (centres < x1)
            iny = (centres >= y0) & (centres < y1)
            out |= iny[:, None] & inx[None, :]
        return out.reshape(-1)
    frac = patch_fraction(boxes_mask(boxes, w, h, resize, crop), patch)
    if rule == "any":
        return (frac > 0).reshape(-1)
    if rule == "majority":
        return (frac > fg_fraction).reshape(-1)
    raise ValueError(f"unknown hit rule {rule!r}")


def mask_patch_targets(mask_crop: np.ndarray, patch: int, rule: HitRule = "any", threshold: float = 0.5) -> np.ndarray:
    """Same rules for a segmentation mask already in crop pixels (center: the patch's centre pixel)."""
    if rule == "center":
        c = patch // 2
        return mask_crop[c::patch, c::patch].reshape(-1).copy()
    frac = patch_fraction(mask_crop, patch)
    return (frac > 0).reshape(-1) if rule == "any" else (frac > threshold).reshape(-1)
