"""LOST (Siméoni et al., BMVC 2021): one object box per image from the last block's patch keys.

As in valeoai/LOST `object_discovery.py` (`lost`, `patch_scoring`, `detect_box`), on the keys of the
last attention block, patch tokens only, all heads concatenated (`main_lost.py`: qkv hook, `k[:, 1:, :]`):

1. A = K K^T (patch similarity).
2. degree_i = #{j != i : A_ij > 0} (`patch_scoring`: diagonal zeroed, negatives clamped, count > 0).
3. seed = the patch of lowest degree.
4. expansion: among the k (=100) lowest-degree patches, those with A[seed, j] > 0.
5. mask = patches whose summed similarity to the expansion set is > 0; box of its 4-connected
   component (scipy.ndimage.label) that contains the seed. The seed always belongs to it: every
   term A[s, seed] of its sum is positive.

Differences, on purpose: the degree order is a stable sort (ties go to the lower patch index; LOST's
`torch.argsort` is not stable, so its tie order is implementation-defined) and similarities are computed
in float64 (LOST: float32 on the GPU), so the sign of a near-zero similarity does not depend on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .boxes_from_maps import PatchBox, label_components, mask_box


@dataclass
class LostResult:
    box: PatchBox  # (c0, r0, c1, r1), patch units, half-open
    seed: int  # flat row-major patch index
    mask: np.ndarray  # bool [gh, gw]: the seed's component
    degree: np.ndarray  # int [n]: positive-similarity degree per patch
    expansion: np.ndarray  # int: patches summed into the seed's similarity map (seed included)


def lost(keys: np.ndarray, grid: tuple[int, int], k_patches: int = 100) -> LostResult:
    """LOST on one image's patch keys [n, d] (row-major over a grid of (rows, cols))."""
    k = np.asarray(keys, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != grid[0] * grid[1]:
        raise ValueError(f"keys of shape {k.shape} do not match a {grid[0]}x{grid[1]} patch grid")
    if k_patches < 1:
        raise ValueError("k_patches must be at least 1")
    a = k @ k.T
    positive = a > 0
    np.fill_diagonal(positive, False)
    degree = positive.sum(axis=1)
    order = np.argsort(degree, kind="stable")
    seed = int(order[0])
    potentials = order[:k_patches]
    expansion = potentials[a[seed, potentials] > 0]
    similarity = a[expansion].sum(axis=0).reshape(grid)
    labels, _ = label_components(similarity > 0)
    comp = labels == labels.reshape(-1)[seed]
    return LostResult(mask_box(comp), seed, comp, degree, expansion)
