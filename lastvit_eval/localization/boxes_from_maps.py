"""Boxes from patch maps: the LAST vote-map box, component boxes, and patch boxes back to image pixels.

The vote-map box (DINO + LaSt object discovery): votes per patch (how many channels' top-k picked it) ->
foreground where votes > mean + n_std * std (population std, ddof=0; or an absolute `threshold`) -> the
4-connected component (scipy.ndimage.label's default cross structure, as LOST uses) holding the most votes
-> its bounding box in patch units. Ties between components: the one scipy labels first (the first in
row-major order). No foreground (all-zero or constant votes: nothing exceeds mean + std) -> no box, which
CorLoc counts as a miss and reports.

Patch boxes are (c0, r0, c1, r1) in patch units, half-open. Back to pixels of the original image:
* `patch_box_to_full_res`: the image was fed at full resolution, zero-padded at the bottom/right to a
  multiple of the patch size (LOST, `main_lost.py`): scale by the patch size, clip x1/y1 to the image
  (`object_discovery.py: detect_box`; its `dino_seg` does not clip: `clip=False`).
* `patch_box_to_original`: the image went through Resize(short side) + CenterCrop: the inverse of
  `geometry.box_to_crop_coords` (torchvision's sizes and rounding), clipped to the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..geometry import input_to_original

PatchBox = tuple[int, int, int, int]  # (c0, r0, c1, r1), patch units, half-open
PixelBox = tuple[float, float, float, float]  # (x0, y0, x1, y1), pixel-edge, x1/y1 exclusive


@dataclass
class MapBox:
    box: PatchBox
    component: np.ndarray  # bool [gh, gw]: the chosen component
    threshold: float  # foreground was map > threshold
    n_components: int


def as_grid(values: np.ndarray, grid: tuple[int, int] | None = None) -> np.ndarray:
    """A flat row-major patch vector (or an already 2-D map) as [gh, gw]; a flat square vector needs no grid."""
    v = np.asarray(values)
    if v.ndim == 2 and grid is None:
        return v
    if grid is None:
        g = int(round(np.sqrt(v.size)))
        if g * g != v.size:
            raise ValueError(f"{v.size} patches are not a square grid; pass grid=(rows, cols)")
        grid = (g, g)
    if v.size != grid[0] * grid[1]:
        raise ValueError(f"{v.size} values do not fill a {grid[0]}x{grid[1]} grid")
    return v.reshape(grid)


def mask_box(mask: np.ndarray) -> PatchBox:
    """Bounding box (c0, r0, c1, r1), half-open, of the True cells of a non-empty 2-D mask."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("empty mask has no box")
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def label_components(fg: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components (scipy's default structure in 2-D), labelled 1.. in row-major scan order."""
    labels, n = ndimage.label(np.asarray(fg, dtype=bool))
    return labels, int(n)


def vote_threshold(votes: np.ndarray, n_std: float = 1.0, threshold: float | None = None) -> float:
    """mean + n_std * std (population) of the map, or `threshold` when given."""
    if threshold is not None:
        return float(threshold)
    v = np.asarray(votes, dtype=np.float64)
    return float(v.mean() + n_std * v.std())


def vote_map_box(votes: np.ndarray, grid: tuple[int, int] | None = None, n_std: float = 1.0,
                 threshold: float | None = None) -> MapBox | None:
    """The LAST vote-map box in patch units, or None when no patch exceeds the threshold."""
    v = as_grid(np.asarray(votes, dtype=np.float64), grid)
    if not np.isfinite(v).all():
        raise ValueError("votes contain NaN or infinity")
    thr = vote_threshold(v, n_std, threshold)
    labels, n = label_components(v > thr)
    if n == 0:
        return None
    mass = ndimage.sum_labels(v, labels, index=np.arange(1, n + 1))
    best = int(np.argmax(mass)) + 1  # first maximum: the lowest label wins ties
    comp = labels == best
    return MapBox(mask_box(comp), comp, thr, n)


def padded_grid(image_size: tuple[int, int], patch: int) -> tuple[int, int]:
    """(rows, cols) of the patch grid of a full-size image zero-padded bottom/right to a multiple of `patch`
    (LOST's `main_lost.py`: ceil(h / patch), ceil(w / patch))."""
    w, h = image_size
    return -(-h // patch), -(-w // patch)


def patch_box_to_full_res(box: PatchBox, patch: int, image_size: tuple[int, int], clip: bool = True) -> PixelBox:
    """Patch box -> original pixels for an image fed at full size, padded bottom/right (LOST's protocol)."""
    w, h = image_size
    x0, y0, x1, y1 = (float(b * patch) for b in box)
    if clip:
        x1, y1 = min(x1, float(w)), min(y1, float(h))
    return x0, y0, x1, y1


def patch_box_to_original(box: PatchBox, patch: int, image_size: tuple[int, int], resize: int,
                          crop: int, kind: str = "resize-crop") -> PixelBox:
    """Patch box on the crop grid -> original pixels: the inverse of Resize(resize, short side) + CenterCrop(crop)
    (or of the squash to crop x crop, kind `squash`).

    A crop coordinate u maps back to (u + left) * w / new_w (geometry.input_to_original, the exact inverse of
    geometry.box_to_crop_coords), clipped to the image.
    """
    w, h = image_size
    c0, r0, c1, r1 = box
    x0, y0, x1, y1 = (float(v) for v in input_to_original((c0 * patch, r0 * patch, c1 * patch, r1 * patch),
                                                          w, h, resize, crop, kind))
    return (min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h))
