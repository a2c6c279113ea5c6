"""DINO-seg: the object-discovery baseline of LOST built on DINO's attention-mass masks.

As in valeoai/LOST `object_discovery.py: dino_seg` (after DINO's `visualize_attention.py`), run by
`main_lost.py --dinoseg` with `--dinoseg_head 4` by default:

1. the last block's attention of the CLS query to the patch tokens, one head (default head 4, not the
   mean over heads);
2. keep the patches that hold the top 60% of that head's attention mass: sort ascending, normalise by
   the sum, keep where the cumulative mass > 1 - 0.6;
3. 4-connected components (scipy.ndimage.label) of the kept patches -> one component -> its box, scaled
   by the patch size without clipping to the image.

Component choice. "Largest component" is the description; LOST's code measures the sizes of labels
0 .. max-1 (`range(np.max(labeled_array))`) and takes the largest of labels 1 .. max-1, so the last
labelled component is never chosen, and with a single component it takes label 0, the *unkept*
patches. The published DINO-seg CorLoc (45.8 / 46.2 / 42.1) comes from that code, so
`component="lost"` (default) reproduces it; `component="largest"` is the described method (ties: the
lowest label, i.e. the first component in row-major order). Ties inside the mass sort: stable (by patch
index); torch.sort, which LOST uses, is not stable.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .boxes_from_maps import PatchBox, label_components, mask_box

Component = Literal["lost", "largest"]


def attention_mass_mask(attention: np.ndarray, mass: float = 0.6) -> np.ndarray:
    """Bool [n]: the patches that together hold the top `mass` share of a non-negative attention vector."""
    a = np.asarray(attention, dtype=np.float64)
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    if not (np.isfinite(a).all() and (a >= 0).all() and a.sum() > 0):
        raise ValueError("attention must be finite, non-negative and not all zero")
    order = np.argsort(a, kind="stable")
    cum = np.cumsum(a[order] / a.sum())
    keep = np.empty(a.shape, dtype=bool)
    keep[order] = cum > 1.0 - mass
    return keep


def dino_seg(cls_attention: np.ndarray, grid: tuple[int, int], head: int | Literal["mean"] = 4, mass: float = 0.6,
             component: Component = "lost") -> tuple[PatchBox, np.ndarray]:
    """DINO-seg box (patch units) and the kept-patch mask [gh, gw] from CLS attention [heads, n] (patches only)."""
    att = np.asarray(cls_attention, dtype=np.float64)
    if att.ndim == 1:
        att = att[None]
    if att.ndim != 2 or att.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"CLS attention of shape {att.shape} does not match a {grid[0]}x{grid[1]} patch grid")
    if head == "mean":
        a = att.mean(axis=0)
    elif isinstance(head, int) and 0 <= head < att.shape[0]:
        a = att[head]
    else:
        raise ValueError(f"head {head!r} out of range for {att.shape[0]} heads (or 'mean')")
    kept = attention_mass_mask(a, mass).reshape(grid)
    labels, n = label_components(kept)
    sizes = np.bincount(labels.reshape(-1), minlength=n + 1)  # sizes[0]: unkept patches
    if component == "largest":
        chosen = int(np.argmax(sizes[1:])) + 1
    elif component == "lost":
        chosen = int(np.argmax(sizes[1:n])) + 1 if n >= 2 else 0
    else:
        raise ValueError(f"unknown component rule {component!r}; use 'lost' or 'largest'")
    chosen_mask = labels == chosen
    if not chosen_mask.any():  # LOST's rule on a map where every patch is kept: no unkept patch to box
        chosen_mask = np.ones_like(kept)
    return mask_box(chosen_mask), kept
