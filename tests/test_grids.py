"""Any grid: PiB geometry on 8/14/16/32-pixel patches and non-224 inputs against brute-force pixels, pictures
on a 37x37 grid, and a DINOv2-with-registers patch-hit run through the CLI checked against timm's forward."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from test_models_dinov2 import reference, to_dinov2_layout
from timm.models.vision_transformer import checkpoint_filter_fn
from typer.testing import CliRunner

from lastvit_eval.app import app
from lastvit_eval.data.masks import mask_to_crop
from lastvit_eval.data.transform import TransformSpec
from lastvit_eval.geometry import mask_patch_targets, patch_targets, resized_size
from lastvit_eval.report import plots

# (resize, crop, patch): DINOv2 at 518 / 14, 224 / 14, 384 / 16, 256 / 32, 224 / 8, and a small odd one
GRIDS = [(592, 518, 14), (256, 224, 14), (438, 384, 16), (292, 256, 32), (256, 224, 8), (80, 70, 14)]
# every patch size at a non-224 input and at 224: (resize, crop, patch)
MASK_GRIDS = [*GRIDS, (592, 518, 8), (438, 384, 14), (438, 384, 32), (292, 256, 16), (292, 256, 8), (256, 224, 16),
              (256, 224, 32)]


@st.composite
def image_and_box(draw):
    w, h = draw(st.integers(16, 900)), draw(st.integers(16, 900))
    x0 = draw(st.integers(0, w - 1))
    x1 = draw(st.integers(x0 + 1, w))
    y0 = draw(st.integers(0, h - 1))
    y1 = draw(st.integers(y0 + 1, h))
    return w, h, (x0, y0, x1, y1)


def _origin(w, h, resize, crop):
    """Resized size as torchvision computes it (from the tensor it returns) and the crop offsets."""
    from torchvision.transforms.v2 import functional as TF

    nh, nw = TF.resize(torch.zeros(1, h, w), [resize], antialias=False).shape[-2:]
    return nw, nh, int(round((nw - crop) / 2.0)), int(round((nh - crop) / 2.0))


def brute_force_patches(box, w, h, resize, crop, patch, rule):
    """Per crop pixel: is its centre (mapped back to the original image) inside the box; then per patch."""
    nw, nh, left, top = _origin(w, h, resize, crop)

    def inside(lo, hi, size, new, off):
        return np.array([Fraction(lo) <= Fraction(2 * (i + off) + 1, 2) * Fraction(size, new) < Fraction(hi)
                         for i in range(crop)])

    mask = inside(box[1], box[3], h, nh, top)[:, None] & inside(box[0], box[2], w, nw, left)[None, :]
    g = crop // patch
    out = np.zeros((g, g), dtype=bool)
    for r in range(g):
        for c in range(g):
            cell = mask[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch]
            out[r, c] = cell.any() if rule == "any" else cell.mean() > 0.5
    return out.reshape(-1)


@settings(max_examples=120, deadline=None)
@given(ib=image_and_box(), sizes=st.sampled_from(GRIDS), rule=st.sampled_from(["any", "majority"]))
def test_patch_targets_on_any_grid(ib, sizes, rule):
    w, h, box = ib
    resize, crop, patch = sizes
    expect = brute_force_patches(box, w, h, resize, crop, patch, rule)
    got = patch_targets([box], w, h, resize, crop, patch, rule)
    assert got.shape == ((crop // patch) ** 2,)
    np.testing.assert_array_equal(got, expect)


@settings(max_examples=150, deadline=None)
@given(ib=image_and_box(), sizes=st.sampled_from(MASK_GRIDS), rule=st.sampled_from(["any", "majority"]))
def test_rectangular_mask_gives_the_box_targets_on_any_grid(ib, sizes, rule):
    """The mask path (mask_to_crop: nearest-exact resize + centre crop, then mask_patch_targets) and the box
    path (patch_targets) give the brute-force pixel answer for the same rectangle, on every grid."""
    w, h, box = ib
    resize, crop, patch = sizes
    mask = np.zeros((h, w), dtype=bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    expect = brute_force_patches(box, w, h, resize, crop, patch, rule)
    in_crop = mask_to_crop(mask, resize, crop)
    assert in_crop.shape == (crop, crop)
    np.testing.assert_array_equal(mask_patch_targets(in_crop, patch, rule), expect)
    np.testing.assert_array_equal(patch_targets([box], w, h, resize, crop, patch, rule), expect)


@settings(max_examples=120, deadline=None)
@given(ib=image_and_box(), sizes=st.sampled_from(GRIDS))
def test_center_rule_on_any_grid(ib, sizes):
    """The patch centre point, mapped back to original coordinates, lies in [x0, x1) x [y0, y1)."""
    w, h, box = ib
    resize, crop, patch = sizes
    nw, nh, left, top = _origin(w, h, resize, crop)
    g = crop // patch
    expect = np.zeros((g, g), dtype=bool)
    for r in range(g):
        for c in range(g):
            x = (Fraction(2 * c + 1, 2) * patch + left) * Fraction(w, nw)
            y = (Fraction(2 * r + 1, 2) * patch + top) * Fraction(h, nh)
            expect[r, c] = box[0] <= x < box[2] and box[1] <= y < box[3]
    np.testing.assert_array_equal(patch_targets([box], w, h, resize, crop, patch, "center"), expect.reshape(-1))


def test_resized_size_at_non_224_resizes():
    from torchvision.transforms.v2 import functional as TF

    for w, h in ((500, 375), (375, 500), (640, 480), (37, 900)):
        for resize in (592, 438, 292, 80):
            out = TF.resize(torch.zeros(1, h, w), [resize], antialias=False)
            assert resized_size(w, h, resize) == (out.shape[-1], out.shape[-2])


def test_pictures_on_a_37x37_grid(tmp_path):
    rng = np.random.default_rng(0)
    crop = (rng.random((518, 518, 3)) * 255).astype(np.uint8)
    scores = rng.random((37, 37))
    votes = rng.integers(0, 5, (37, 37)).astype(float)
    box = np.array([[100.0, 120.0, 300.0, 400.0]])
    for path in (plots.heatmap_grid([crop], [scores], [box], tmp_path / "h.png"),
                 plots.vote_map_grid([votes], tmp_path / "v.png", images=[crop], boxes=[box])):
        assert Image.open(path).size == plots.grid_pixels(1)


def test_patch_hit_cli_on_dinov2_registers(imagenet_root, tmp_path):
    """The top patch of every row equals the arg-max of cosine(patch, mean of patches) from timm's reference
    forward at the same size: registers never enter GAP, on a 8x8 grid of 14-pixel patches at 112 px."""
    ref = reference("vit_small_patch14_reg4_dinov2", seed=7)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(to_dinov2_layout(ref.state_dict(), chunks=2), path)
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["run", "-e", "patch-hit", "-c", str(path), "-r", str(imagenet_root), "-o", str(out),
                                 "-p", "gap", "--image-size", "112", "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "gap" / "metrics.json").read_text())
    prov = rec["provenance"]
    assert prov["model"]["arch"]["num_registers"] == 4 and prov["model"]["arch"]["image_size"] == 112
    assert (prov["transform"]["crop"], prov["transform"]["resize"]) == (112, 128)
    rows = pd.read_csv(out / "gap" / "patch_hit_rows.csv")
    assert len(rows) == rec["info"]["patch-hit"]["evaluated"] > 0
    big = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=112, depth=2).eval()
    big.load_state_dict(checkpoint_filter_fn(ref.state_dict(), big))
    spec = TransformSpec(resize=128, crop=112, interpolation="bicubic")
    files = {p.stem: p for p in (imagenet_root / "val").rglob("*.JPEG")}
    with_registers = []
    for image_id, top, score in zip(rows["image_id"], rows["top_patch"], rows["score"], strict=True):
        x = spec.normalize(spec.pixels(Image.open(files[image_id]).convert("RGB"))[None])
        with torch.no_grad():
            tokens = big.forward_features(x)[0]
        patches = tokens[5:]
        cos = F.cosine_similarity(patches, patches.mean(0, keepdim=True), dim=-1)
        assert int(top) == int(cos.argmax()) and abs(score - float(cos.max())) < 1e-4
        wrong = F.cosine_similarity(patches, tokens[1:].mean(0, keepdim=True), dim=-1)  # registers averaged in
        with_registers.append(abs(score - float(wrong[int(top)])))
    assert max(with_registers) > 1e-3  # the check above would catch registers in the mean
