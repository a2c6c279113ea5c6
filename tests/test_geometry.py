"""Box geometry against independent references: torchvision's own resize/crop and a brute-force pixel mask."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from lastvit_eval.data.transform import TransformSpec
from lastvit_eval.geometry import (
    box_to_crop_pixels,
    crop_offsets,
    patch_fraction,
    patch_targets,
    resized_size,
)


def brute_force_mask(box, w, h, resize, crop):
    """Per crop pixel: map its centre back to the original image and test membership (exact fractions)."""
    nw, nh = TF.resize(torch.zeros(1, h, w), [resize], antialias=False).shape[-1:-3:-1]
    left, top = int(round((nw - crop) / 2.0)), int(round((nh - crop) / 2.0))

    def axis(lo, hi, size, new, off):
        return np.array([Fraction(lo) <= Fraction(2 * (i + off) + 1, 2) * Fraction(size, new) < Fraction(hi)
                         for i in range(crop)])

    return axis(box[1], box[3], h, nh, top)[:, None] & axis(box[0], box[2], w, nw, left)[None, :]


@settings(max_examples=200, deadline=None)
@given(w=st.integers(20, 700), h=st.integers(20, 700), resize=st.sampled_from([32, 64, 128, 256]))
def test_sizes_match_torchvision(w, h, resize):
    out = TF.resize(torch.zeros(1, h, w), [resize], antialias=False)
    assert resized_size(w, h, resize) == (out.shape[-1], out.shape[-2])


@settings(max_examples=100, deadline=None)
@given(w=st.integers(10, 300), h=st.integers(10, 300))
def test_crop_offset_matches_torchvision(w, h):
    crop = min(w, h, 8)
    img = torch.arange(w * h).reshape(1, h, w)
    left, top = crop_offsets(w, h, crop)
    assert TF.center_crop(img, [crop])[0, 0, 0].item() == top * w + left


@st.composite
def image_and_box(draw):
    w, h = draw(st.integers(16, 600)), draw(st.integers(16, 600))
    x0 = draw(st.integers(0, w - 1))
    x1 = draw(st.integers(x0 + 1, w))
    y0 = draw(st.integers(0, h - 1))
    y1 = draw(st.integers(y0 + 1, h))
    return w, h, (x0, y0, x1, y1)


@settings(max_examples=300, deadline=None)
@given(ib=image_and_box(), sizes=st.sampled_from([(256, 224, 16), (128, 112, 8), (224, 224, 16), (36, 32, 8)]),
       rule=st.sampled_from(["any", "majority"]))
def test_patch_targets_match_brute_force(ib, sizes, rule):
    w, h, box = ib
    resize, crop, patch = sizes
    mask = brute_force_mask(box, w, h, resize, crop)
    c0, r0, c1, r1 = box_to_crop_pixels(box, w, h, resize, crop)
    np.testing.assert_array_equal(mask, _rect(c0, r0, c1, r1, crop))
    frac = patch_fraction(mask, patch).reshape(-1)
    expect = frac > 0 if rule == "any" else frac > 0.5
    np.testing.assert_array_equal(patch_targets([box], w, h, resize, crop, patch, rule), expect)


def _rect(c0, r0, c1, r1, crop):
    m = np.zeros((crop, crop), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


@settings(max_examples=60, deadline=None)
@given(ib=image_and_box())
def test_mask_pushed_through_torchvision_nearest_exact(ib):
    """The pixel mask itself, resized by torchvision (NEAREST_EXACT samples at pixel centres) and cropped."""
    w, h, box = ib
    resize, crop = 128, 112
    src = torch.zeros(1, h, w, dtype=torch.uint8)
    src[0, box[1]:box[3], box[0]:box[2]] = 1
    out = TF.center_crop(TF.resize(src, [resize], interpolation=InterpolationMode.NEAREST_EXACT), [crop])[0].bool()
    ours = _rect(*box_to_crop_pixels(box, w, h, resize, crop), crop)
    # float32 sampling positions in torch may disagree with exact arithmetic only on pixels whose centre
    # maps exactly onto a box edge: every differing pixel must sit on the line just inside or outside an edge
    diff = out.numpy() ^ ours
    c0, r0, c1, r1 = box_to_crop_pixels(box, w, h, resize, crop)
    rows, cols = np.nonzero(diff)
    near_row = np.isin(rows, [r0 - 1, r0, r1 - 1, r1]) & (cols >= c0 - 1) & (cols <= c1)
    near_col = np.isin(cols, [c0 - 1, c0, c1 - 1, c1]) & (rows >= r0 - 1) & (rows <= r1)
    assert (near_row | near_col).all(), list(zip(rows[~(near_row | near_col)], cols[~(near_row | near_col)], strict=True))


def test_center_rule_and_tiny_box():
    # a box covering exactly patch (row 1, col 2) of a 2x... grid: 8px patches, 32 crop, image already 32x32
    box = (16, 8, 24, 16)
    t = patch_targets([box], 32, 32, 32, 32, 8, "center").reshape(4, 4)
    assert t[1, 2] and t.sum() == 1
    # a 1-pixel box: 'any' marks its patch, 'majority' none
    assert patch_targets([(5, 5, 6, 6)], 32, 32, 32, 32, 8, "any").sum() == 1
    assert patch_targets([(5, 5, 6, 6)], 32, 32, 32, 32, 8, "majority").sum() == 0


def test_transform_pixels_match_torchvision_pipeline(tmp_path):
    """Our PIL pipeline + device normalization equals torchvision's Resize/CenterCrop/ToTensor/Normalize."""
    from torchvision import transforms as T

    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((150, 210, 3)) * 255).astype(np.uint8))
    spec = TransformSpec(resize=64, crop=56)
    ours = spec.normalize(spec.pixels(img).unsqueeze(0))[0]
    ref = T.Compose([T.Resize(64), T.CenterCrop(56), T.ToTensor(), T.Normalize(spec.mean, spec.std)])(img)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


@settings(max_examples=40, deadline=None)
@given(ib=image_and_box(), fg=st.sampled_from([0.05, 0.25, 0.5, 0.75, 0.95]))
def test_majority_rule_uses_fg_fraction(ib, fg):
    """majority with --fg-fraction f: a patch is a target when more than f of its pixels are in the box,
    counted pixel by pixel here."""
    w, h, box = ib
    resize, crop, patch = 128, 112, 16
    m = _rect(*box_to_crop_pixels(box, w, h, resize, crop), crop)
    g = crop // patch
    expect = np.array([m[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].sum() > fg * patch * patch
                       for r in range(g) for c in range(g)])
    np.testing.assert_array_equal(patch_targets([box], w, h, resize, crop, patch, "majority", fg), expect)
