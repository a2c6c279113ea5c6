"""LOST and DINO-seg against literal, loop-based transcriptions of the published procedures (valeoai/LOST
object_discovery.py: lost / patch_scoring / detect_box / dino_seg), written here with their own connected
components (breadth-first search), on random inputs over several seeds."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from lastvit_eval.localization.dino_seg import dino_seg
from lastvit_eval.localization.lost import lost


def components(fg: list[list[bool]]) -> list[list[int]]:
    """4-connected labels 1.. numbered by each component's first cell in row-major order; 0 = background."""
    rows, cols = len(fg), len(fg[0])
    lab = [[0] * cols for _ in range(rows)]
    nxt = 0
    for r in range(rows):
        for c in range(cols):
            if fg[r][c] and lab[r][c] == 0:
                nxt += 1
                lab[r][c] = nxt
                queue = deque([(r, c)])
                while queue:
                    y, x = queue.popleft()
                    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < rows and 0 <= xx < cols and fg[yy][xx] and lab[yy][xx] == 0:
                            lab[yy][xx] = nxt
                            queue.append((yy, xx))
    return lab


def cells_box(lab, value):
    cells = [(r, c) for r, row in enumerate(lab) for c, v in enumerate(row) if v == value]
    return (min(c for _, c in cells), min(r for r, _ in cells), max(c for _, c in cells) + 1,
            max(r for r, _ in cells) + 1)


def lost_reference(keys, grid, k_patches):
    n, d = len(keys), len(keys[0])
    a = [[sum(keys[i][t] * keys[j][t] for t in range(d)) for j in range(n)] for i in range(n)]
    degree = [sum(1 for j in range(n) if j != i and a[i][j] > 0) for i in range(n)]
    order = sorted(range(n), key=lambda i: (degree[i], i))  # lowest degree first, ties by index
    seed = order[0]
    similars = [j for j in order[:k_patches] if a[seed][j] > 0]
    m = [sum(a[s][j] for s in similars) for j in range(n)]
    rows, cols = grid
    lab = components([[m[r * cols + c] > 0 for c in range(cols)] for r in range(rows)])
    return cells_box(lab, lab[seed // cols][seed % cols]), seed, degree


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("k_patches", [100, 6])
def test_lost_matches_transcription(seed, k_patches):
    rng = np.random.default_rng(seed)
    grid = (6, 7) if seed % 2 else (7, 7)
    n = grid[0] * grid[1]
    # small integers: exact products, exact zeros (the > 0 tests) and many degree ties
    keys = rng.integers(-3, 4, size=(n, 6))
    r0, c0 = rng.integers(0, 3, size=2)
    obj = [(r0 + i) * grid[1] + c0 + j for i in range(3) for j in range(3)]
    keys[obj] += np.array([4, -3, 0, 2, 0, 1])  # an "object": keys that agree with each other
    box, seed_patch, degree = lost_reference(keys.tolist(), grid, k_patches)
    got = lost(keys.astype(np.float32), grid, k_patches=k_patches)
    assert got.seed == seed_patch
    np.testing.assert_array_equal(got.degree, degree)
    assert got.box == box
    assert got.mask.reshape(-1)[seed_patch]


def test_lost_rejects_mismatched_grid():
    with pytest.raises(ValueError, match="grid"):
        lost(np.zeros((10, 4)), (3, 3))


def dino_seg_reference(att, grid, head, component):
    """dino_seg: sort ascending, normalise, cumulative mass > 1 - 0.6 kept; LOST's component rule or the largest."""
    vals = list(att[head]) if head != "mean" else [sum(col) / len(att) for col in zip(*att, strict=True)]
    n = len(vals)
    order = sorted(range(n), key=lambda i: (vals[i], i))
    total = sum(vals)
    kept, cum = [False] * n, 0.0
    for i in order:
        cum += vals[i] / total
        kept[i] = cum > 1 - 0.6
    rows, cols = grid
    lab = components([[kept[r * cols + c] for c in range(cols)] for r in range(rows)])
    flat = [v for row in lab for v in row]
    top = max(flat)
    if component == "lost":
        sizes = [sum(1 for v in flat if v == c) for c in range(top)]  # range(np.max(labeled_array)), as LOST
        chosen = int(np.argmax(sizes[1:])) + 1 if len(sizes) > 1 else 0
    else:
        sizes = [sum(1 for v in flat if v == c) for c in range(1, top + 1)]
        chosen = sizes.index(max(sizes)) + 1
    return cells_box(lab, chosen), kept


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("component", ["lost", "largest"])
def test_dino_seg_matches_transcription(seed, component):
    rng = np.random.default_rng(100 + seed)
    grid = (6, 8) if seed % 2 else (7, 7)
    heads = 6
    # softmax-like positive attention with ties (integers) and a bright region
    att = rng.integers(1, 20, size=(heads, grid[0] * grid[1])).astype(np.float64)
    att[:, rng.integers(0, att.shape[1], size=5)] += 40
    # a bright object at the bottom right: often the last label, where LOST's rule and the largest differ
    att.reshape(heads, *grid)[:, -3:, -3:] += rng.integers(30, 60, size=(heads, 3, 3))
    differ = 0
    for head in (4, 0, "mean"):
        box, kept = dino_seg_reference(att.tolist(), grid, head, component)
        got_box, got_kept = dino_seg(att, grid, head=head, component=component)
        np.testing.assert_array_equal(got_kept.reshape(-1), kept)
        assert got_box == box, (head, component)
        differ += got_box != dino_seg(att, grid, head=head, component="largest")[0]
    if component == "lost" and seed in (0, 1, 2):
        assert differ > 0  # the inputs exercise the rule (12 of 18 cases differ over these seeds)


def test_dino_seg_lost_rule_quirks():
    grid = (4, 4)
    one = np.ones(16)
    one[[5, 6, 9, 10]] = 100  # a single bright 2x2 component holds > 60% of the mass
    # LOST's rule with a single component boxes label 0, the unkept patches: here the whole grid
    assert dino_seg(one[None], grid, head=0, component="lost")[0] == (0, 0, 4, 4)
    assert dino_seg(one[None], grid, head=0, component="largest")[0] == (1, 1, 3, 3)
    two = np.ones(16)
    two[0] = 301
    two[[13, 14, 15]] = 300  # kept: 14, 15 (label 2) and 0 (label 1); LOST's rule never picks the last label
    assert dino_seg(two[None], grid, head=0, component="largest")[0] == (2, 3, 4, 4)
    assert dino_seg(two[None], grid, head=0, component="lost")[0] == (0, 0, 1, 1)
    # uniform attention on 5 patches: cumulative mass 0.2, 0.4, 0.6, ... and 0.4 is not > 1 - 0.6 (both exact)
    box, kept = dino_seg(np.ones((1, 5)), (1, 5), head=0, component="largest")
    assert kept.reshape(-1).tolist() == [False, False, True, True, True] and box == (2, 0, 5, 1)
    with pytest.raises(ValueError, match="head"):
        dino_seg(np.ones((2, 16)), grid, head=4)
