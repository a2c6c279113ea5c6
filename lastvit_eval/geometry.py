"""Annotations through the exact resize + center crop of the pixels, onto the patch grid.

Coordinates are continuous pixel-edge coordinates: pixel p spans [p, p + 1). A box (x0, y0, x1, y1)
covers [x0, x1) x [y0, y1) of the original image. Resampling (PIL, torch, align_corners=False) maps an
original coordinate x to x * new_w / w, so a crop pixel belongs to the box when its centre maps inside
the box. Sizes and offsets follow torchvision: the short side becomes `resize`, the long side
int(resize * long / short); the crop offset is int(round((size - crop) / 2)).
Integer arithmetic (fractions) keeps pixel membership exact at ties.

Two transform kinds (`TransformSpec.kind`) share one affine map (`input_map`: original -> input pixels,
x * scale_x - offset_x): `resize-crop` (the above) and `squash` (open_clip's resize_mode='squash', e.g.
SigLIP: the whole image resized to crop x crop, aspect ratio not kept, no crop, so offsets are 0 and no box
falls outside). Every function below goes through it, so the two kinds cannot drift apart.
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


TransformKind = Literal["resize-crop", "squash"]


def input_resize(w: int, h: int, resize: int, crop: int, kind: TransformKind = "resize-crop") -> tuple[int, int]:
    """(new_w, new_h) of the resize step before the center crop: short side -> `resize`, or squash to crop x crop."""
    if kind == "squash":
        return crop, crop
    if kind == "resize-crop":
        return resized_size(w, h, resize)
    raise ValueError(f"transform kind {kind!r} has no resize + crop geometry")


def input_map(
    w: int, h: int, resize: int, crop: int, kind: TransformKind = "resize-crop"
) -> tuple[Fraction, Fraction, int, int]:
    """(scale_x, scale_y, offset_x, offset_y): original x -> input x * scale_x - offset_x (same for y), exact.

    The one map every annotation takes to the model's input grid (and CorLoc's boxes take back)."""
    nw, nh = input_resize(w, h, resize, crop, kind)
    left, top = crop_offsets(nw, nh, crop)
    return Fraction(nw, w), Fraction(nh, h), left, top


def _axis_range(a0: float, a1: float, scale: Fraction, offset: int, crop: int) -> tuple[int, int]:
    """Crop pixel indices [i0, i1) whose centres map inside [a0, a1) along one axis."""
    # pixel i (crop coords) has centre (i + offset + 1/2) / scale in original coords.
    # i + offset + 1/2 >= a0 * scale  <=>  i >= ceil(a0 * scale - offset - 1/2)
    lo = math.ceil(Fraction(a0) * scale - offset - Fraction(1, 2))
    hi = math.ceil(Fraction(a1) * scale - offset - Fraction(1, 2))
    return max(lo, 0), min(max(hi, 0), crop)


def box_to_crop_pixels(
    box: tuple[float, float, float, float], w: int, h: int, resize: int, crop: int,
    kind: TransformKind = "resize-crop",
) -> tuple[int, int, int, int]:
    """Box in original coords -> crop pixel index ranges (c0, r0, c1, r1), half-open, maybe empty."""
    sx, sy, left, top = input_map(w, h, resize, crop, kind)
    c0, c1 = _axis_range(box[0], box[2], sx, left, crop)
    r0, r1 = _axis_range(box[1], box[3], sy, top, crop)
    return c0, r0, c1, r1


def box_to_crop_coords(
    box: tuple[float, float, float, float], w: int, h: int, resize: int, crop: int,
    kind: TransformKind = "resize-crop",
) -> tuple[float, float, float, float]:
    """Box in original coords -> continuous coords in the crop (may extend outside [0, crop])."""
    fx, fy, left, top = input_map(w, h, resize, crop, kind)
    sx, sy = float(fx), float(fy)
    return box[0] * sx - left, box[1] * sy - top, box[2] * sx - left, box[3] * sy - top


def input_to_original(
    box: tuple[float, float, float, float], w: int, h: int, resize: int, crop: int,
    kind: TransformKind = "resize-crop",
) -> tuple[float, float, float, float]:
    """Box in input (crop) pixels -> original pixels: the inverse of `box_to_crop_coords` (not clipped)."""
    fx, fy, left, top = input_map(w, h, resize, crop, kind)
    return ((box[0] + left) / fx, (box[1] + top) / fy, (box[2] + left) / fx, (box[3] + top) / fy)


def boxes_mask(boxes, w: int, h: int, resize: int, crop: int, kind: TransformKind = "resize-crop") -> np.ndarray:
    """Union of boxes as a boolean pixel mask [crop, crop] of the cropped image."""
    mask = np.zeros((crop, crop), dtype=bool)
    for box in boxes:
        c0, r0, c1, r1 = box_to_crop_pixels(box, w, h, resize, crop, kind)
        mask[r0:r1, c0:c1] = True
    return mask


def patch_fraction(mask: np.ndarray, patch: int) -> np.ndarray:
    """Fraction of each patch's pixels inside the mask -> [gh, gw]."""
    gh, gw = mask.shape[0] // patch, mask.shape[1] // patch
    m = mask[: gh * patch, : gw * patch].reshape(gh, patch, gw, patch)
    return m.mean(axis=(1, 3))


def patch_targets(
    boxes, w: int, h: int, resize: int, crop: int, patch: int, rule: HitRule = "any", fg_fraction: float = 0.5,
    kind: TransformKind = "resize-crop",
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
            x0, y0, x1, y1 = box_to_crop_coords(box, w, h, resize, crop, kind)
            inx = (centres >= x0) & (centres < x1)
            iny = (centres >= y0) & (centres < y1)
            out |= iny[:, None] & inx[None, :]
        return out.reshape(-1)
    frac = patch_fraction(boxes_mask(boxes, w, h, resize, crop, kind), patch)
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
