"""Plots: each writes a PNG that PIL opens, at the pixel size the fixed figure size promises."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lastvit_eval.report.plots import grid_pixels, heatmap_grid, score_distribution, vote_map_grid


def crops(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8) // 4 for _ in range(n)]  # dark images


def colour_fraction(img: Image.Image, rgb: tuple[int, int, int], tol: int = 40) -> float:
    a = np.asarray(img.convert("RGB")).astype(int)
    return float((np.abs(a - np.array(rgb)).max(axis=-1) <= tol).mean())


def test_heatmap_grid_size_and_overlays(tmp_path):
    rng = np.random.default_rng(0)
    n = 5
    scores = [rng.random((14, 14)) for _ in range(n)]
    boxes = [np.array([[30, 40, 120, 150]]), np.array([[0, 0, 50, 50], [100, 100, 200, 220]]),
             np.zeros((0, 4)), np.array([[10, 10, 60, 200]]), np.array([[80, 20, 220, 90]])]
    path = heatmap_grid(crops(n, rng), scores, boxes, tmp_path / "sub" / "grid.png",
                        titles=[f"img {i}: hit" for i in range(n)])
    assert path == tmp_path / "sub" / "grid.png"
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == grid_pixels(n, 4) == (1000, 645)  # 4 x 2 panels of 250 px, 145 px title + legend
        assert colour_fraction(img, (255, 0, 0), tol=30) > 0  # the red top-patch outline
        assert colour_fraction(img, (0, 255, 0), tol=30) > 0  # the lime ground-truth boxes


def test_heatmap_grid_rejects_bad_arrays(tmp_path):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="uint8"):
        heatmap_grid([np.zeros((224, 224, 3), np.float32)], [rng.random((14, 14))], [np.zeros((0, 4))],
                     tmp_path / "x.png")
    with pytest.raises(ValueError, match="one entry per image"):
        heatmap_grid(crops(2, rng), [rng.random((14, 14))], [np.zeros((0, 4))] * 2, tmp_path / "x.png")


def test_score_distribution_size(tmp_path):
    rng = np.random.default_rng(1)
    scores = np.concatenate([rng.normal(0.6, 0.1, 300), rng.normal(0.2, 0.1, 900)])
    fg = np.arange(scores.size) < 300
    path = score_distribution(scores, fg, tmp_path / "dist.png", title="LAST, ViT-B/16")
    with Image.open(path) as img:
        assert img.size == (600, 400)
    # all-background input still draws (one histogram)
    with Image.open(score_distribution(scores, np.zeros_like(fg), tmp_path / "bg.png")) as img:
        assert img.size == (600, 400)
    with pytest.raises(ValueError):
        score_distribution(scores, fg[:10], tmp_path / "bad.png")


def test_vote_map_grid_size(tmp_path):
    rng = np.random.default_rng(2)
    votes = [rng.multinomial(768, np.ones(196) / 196).reshape(14, 14) for _ in range(3)]
    assert all(v.sum() == 768 for v in votes)  # k = 1: every channel votes for exactly one patch
    with Image.open(vote_map_grid(votes, tmp_path / "votes.png")) as img:
        assert img.size == grid_pixels(3, 4) == (750, 395)
    with Image.open(vote_map_grid(votes, tmp_path / "votes_img.png", images=crops(3, rng), ncols=2)) as img:
        assert img.size == grid_pixels(3, 2) == (500, 715)  # narrow: legend under the colour bar


def _share(img: Image.Image, rgb, tol: int = 6) -> float:
    return colour_fraction(img, rgb, tol)


def test_heatmap_blends_a_perceptual_map_over_a_visible_image(tmp_path):
    """Where a patch has the image's lowest score, the pixel is the alpha blend of the crop and the colour
    map's low end (computed here from matplotlib's own magma), not an opaque colour hiding the object."""
    from matplotlib import colormaps

    crop = np.zeros((224, 224, 3), np.uint8)
    crop[...] = (40, 90, 230)
    scores = np.zeros((14, 14))
    scores[3, 4] = 1.0
    alpha = 0.45
    path = heatmap_grid([crop], [scores], [np.zeros((0, 4))], tmp_path / "h.png", alpha=alpha, hits=[False],
                        title="model, pooling")
    low = np.array(colormaps["magma"](0.0)[:3]) * 255
    expected = tuple(int(round(v)) for v in (1 - alpha) * np.array(crop[0, 0], float) + alpha * low)
    with Image.open(path) as img:
        blended = _share(img, expected)
        assert blended * img.size[0] * img.size[1] > 0.8 * 200 * 200  # most of the 200 px image panel
        assert _share(img, tuple(int(v) for v in crop[0, 0])) < 0.01  # and everywhere tinted, never bare
        assert _share(img, tuple(int(round(v)) for v in low)) < 0.01  # nor the bare colour map


def test_vote_map_leaves_unvoted_patches_uncoloured(tmp_path):
    crop = np.zeros((224, 224, 3), np.uint8)
    crop[...] = (40, 90, 230)
    votes = np.zeros((14, 14), int)
    votes[0, 0], votes[5, 5] = 150, 42  # 192 votes: k = 1 over 192 channels
    path = vote_map_grid([votes], tmp_path / "v.png", images=[crop], boxes=[np.array([[16, 16, 96, 96]])],
                         title="LAST votes")
    with Image.open(path) as img:
        bare = _share(img, (40, 90, 230)) * img.size[0] * img.size[1]
        panel = 200 * 200
        assert 0.9 * panel < bare < panel * (1 - 1.5 / 196)  # the crop shows through except under 2 voted patches
        assert colour_fraction(img, (0, 255, 0), tol=30) > 0  # the box


def test_grid_inputs_must_align(tmp_path):
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="one entry per image"):
        heatmap_grid(crops(2, rng), [rng.random((14, 14))] * 2, [np.zeros((0, 4))] * 2, tmp_path / "x.png",
                     hits=[True])
    with pytest.raises(ValueError, match="boxes"):
        vote_map_grid([np.ones((14, 14))] * 2, tmp_path / "v.png", boxes=[np.zeros((0, 4))])
