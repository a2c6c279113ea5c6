"""The LAST vote-map box on synthetic vote maps with known answers, and patch boxes back to image pixels."""

from __future__ import annotations

import numpy as np
import pytest

from lastvit_eval.geometry import box_to_crop_coords, box_to_crop_pixels
from lastvit_eval.localization.boxes_from_maps import (
    patch_box_to_full_res,
    patch_box_to_original,
    vote_map_box,
)


def test_one_blob():
    v = np.zeros((14, 14))
    v[3:6, 7:11] = 40  # 12 of 196 patches: mean + std is well below 40
    v[0, 0] = 1
    got = vote_map_box(v)
    assert got.box == (7, 3, 11, 6) and got.n_components == 1
    assert got.component.sum() == 12
    assert got.threshold == pytest.approx(v.mean() + v.std())
    # a flat row-major vector (as the votes tap stores it) gives the same box
    assert vote_map_box(v.reshape(-1)).box == (7, 3, 11, 6)
    assert vote_map_box(v.reshape(-1)[:168], grid=(12, 14)).box == (7, 3, 11, 6)


def test_two_blobs_the_one_with_more_votes_wins_not_the_larger():
    v = np.zeros((14, 14))
    v[1:5, 1:5] = 10  # 16 patches, 160 votes
    v[9:11, 9:12] = 30  # 6 patches, 180 votes
    got = vote_map_box(v)
    assert got.n_components == 2 and got.box == (9, 9, 12, 11)
    v[9:11, 9:12] = 25  # 150 votes: the large blob wins now
    assert vote_map_box(v).box == (1, 1, 5, 5)


def test_components_are_four_connected():
    v = np.zeros((6, 6))
    v[1, 1] = v[2, 2] = 9  # diagonal neighbours: two components under 4-connectivity
    v[4, 4] = 10
    got = vote_map_box(v)
    assert got.n_components == 3 and got.box == (4, 4, 5, 5)


def test_ties_go_to_the_first_component_in_row_major_order():
    v = np.zeros((8, 8))
    v[5:7, 1:3] = 7  # starts on row 5
    v[1:3, 5:7] = 7  # starts on row 1: first in scan order
    assert vote_map_box(v).box == (5, 1, 7, 3)
    v2 = np.zeros((8, 8))
    v2[3, 6] = v2[3, 1] = 5  # same row: the left one first
    assert vote_map_box(v2).box == (1, 3, 2, 4)


def test_no_foreground_means_no_box():
    assert vote_map_box(np.zeros((14, 14))) is None  # all-zero votes
    assert vote_map_box(np.full((14, 14), 3.0)) is None  # constant: nothing exceeds mean + std
    v = np.zeros((4, 4))
    v[0, 0] = 1
    assert vote_map_box(v, threshold=1) is None  # strictly greater
    assert vote_map_box(v, threshold=0.5).box == (0, 0, 1, 1)
    with pytest.raises(ValueError):
        vote_map_box(np.array([np.nan] * 4))
    with pytest.raises(ValueError, match="square"):
        vote_map_box(np.zeros(12))


def test_n_std_changes_the_threshold():
    v = np.zeros((10, 10))
    v[2:4, 2:4] = 10
    v[2:4, 4:6] = 3  # touching the strong blob
    assert vote_map_box(v, n_std=1.0).box == (2, 2, 6, 4)  # mean + std = 0.52 + 2.02 < 3
    assert vote_map_box(v, n_std=2.0).box == (2, 2, 4, 4)  # mean + 2 std = 4.56 > 3


def test_full_res_scaling_clips_to_the_image():
    # a 50x37 image padded to 64x48 for 16-pixel patches: the last column/row of patches is partly padding
    assert patch_box_to_full_res((1, 0, 4, 3), 16, (50, 37)) == (16.0, 0.0, 50.0, 37.0)
    assert patch_box_to_full_res((1, 0, 4, 3), 16, (50, 37), clip=False) == (16.0, 0.0, 64.0, 48.0)


@pytest.mark.parametrize("size", [(500, 375), (333, 500), (224, 224), (640, 427), (181, 91)])
def test_inverse_of_resize_and_center_crop(size):
    """Patch box -> original -> geometry's forward mapping lands back on the patch box edges (in crop pixels),
    and the crop pixels geometry assigns to the mapped box are exactly the patch box's pixels."""
    w, h = size
    rng = np.random.default_rng(w * h)
    for _ in range(20):
        c0, c1 = sorted(rng.choice(15, 2, replace=False))
        r0, r1 = sorted(rng.choice(15, 2, replace=False))
        box = patch_box_to_original((c0, r0, c1, r1), 16, (w, h), 256, 224)
        assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
        back = box_to_crop_coords(box, w, h, 256, 224)
        np.testing.assert_allclose(back, (16 * c0, 16 * r0, 16 * c1, 16 * r1), atol=1e-9)
        px = box_to_crop_pixels(tuple(float(x) for x in box), w, h, 256, 224)
        assert px == (16 * c0, 16 * r0, 16 * c1, 16 * r1)


def test_inverse_is_clipped_to_the_image():
    # 200x100 resized to 256x128, crop 224: left 16, top round(-48) (padding rows): the whole grid maps to
    # x in [16, 240] * 200/256 and y in [-48, 176] * 100/128, the rows clipped to the image
    assert patch_box_to_original((0, 0, 14, 14), 16, (200, 100), 128, 224) == (12.5, 0.0, 187.5, 100.0)
