"""Transform kind `squash` (open_clip resize_mode='squash', SigLIP): pixels against open_clip's own preprocessing,
geometry against a brute-force pixel-centre computation, a SigLIP-style tower through the CLI, and store keys."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from open_clip.model import CustomTextCLIP
from open_clip.transform import image_transform
from PIL import Image
from test_models_openclip_towers import SIGLIP_CFG, _save_hf
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from typer.testing import CliRunner

from lastvit_eval.app import app
from lastvit_eval.data.masks import mask_to_crop
from lastvit_eval.data.transform import CLIP_MEAN, CLIP_STD, TransformSpec, open_clip_resize_mode, squash
from lastvit_eval.errors import InputError
from lastvit_eval.evaluators.artifacts import object_patches
from lastvit_eval.geometry import box_to_crop_coords, box_to_crop_pixels, input_map, patch_targets
from lastvit_eval.localization.boxes_from_maps import patch_box_to_original
from lastvit_eval.localization.coarse_seg import labels_to_crop
from lastvit_eval.models import load_model

runner = CliRunner()
SIZES = [(500, 375), (375, 500)]
GRIDS = [(224, 16), (224, 14)]  # (input side, patch)


def _jpeg(path, w, h, seed=0):
    """A real JPEG with structure at every scale (gradients, a disc, noise), so resampling differences show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, ((x - w / 2) ** 2 + (y - h / 3) ** 2 < (h / 4) ** 2) * 200], -1)
    arr = np.clip(arr + rng.integers(-30, 30, arr.shape), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, format="JPEG", quality=85)
    return Image.open(path).convert("RGB")


# --- pixels -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("interp", ["bicubic", "bilinear"])
def test_squash_pixels_equal_open_clip_image_transform(tmp_path, size, interp):
    """open_clip's own eval transform (resize_mode='squash') on a real JPEG: our uint8 pixels equal its resized
    PIL image exactly (both are PIL's resampling), our normalized tensor equals its output within 1e-6."""
    img = _jpeg(tmp_path / "a.jpg", *size)
    ref_t = image_transform(224, is_train=False, mean=CLIP_MEAN, std=CLIP_STD, resize_mode="squash",
                            interpolation=interp)
    spec = squash(TransformSpec(resize=224, crop=224, interpolation=interp, mean=CLIP_MEAN, std=CLIP_STD))
    ours = spec.pixels(img)
    assert ours.shape == (3, 224, 224)
    resized = ref_t.transforms[0](img)  # open_clip's Resize((224, 224)) step alone, a PIL image
    np.testing.assert_array_equal(ours.permute(1, 2, 0).numpy(), np.asarray(resized))
    ref = ref_t(img)
    got = spec.normalize(ours[None])[0]
    assert (got - ref).abs().max().item() < 1e-6
    # and the resize-crop kind is really different on a non-square image
    other = TransformSpec(resize=224, crop=224, interpolation=interp).pixels(img)
    assert not torch.equal(other, ours)


def test_gpu_decode_resize_squashes_too(tmp_path):
    """`--decode gpu`'s tensor resize (run here on CPU tensors) follows the squash geometry: same shape, within a
    level of PIL (tensor vs PIL resampling; the run measures this gap itself with `parity`)."""
    from lastvit_eval.engine.gpu_decode import resize_crop

    img = _jpeg(tmp_path / "a.jpg", 500, 375)
    spec = squash(TransformSpec(resize=224, crop=224, interpolation="bicubic"))
    gpu = resize_crop(TF.pil_to_tensor(img), spec)
    cpu = spec.pixels(img)
    assert gpu.shape == cpu.shape == (3, 224, 224)
    diff = (gpu.int() - cpu.int()).abs()
    assert diff.max().item() <= 1  # measured: max 1 level, on 0.3% of the values (500x375, 375x500)


def test_spec_records_kind_only_when_not_default():
    base = TransformSpec(resize=224, crop=224, interpolation="bicubic")
    assert "kind" not in base.to_dict() and "pad_multiple" not in base.to_dict()
    d = squash(base).to_dict()
    assert d["kind"] == "squash" and (d["resize"], d["crop"]) == (224, 224)
    assert TransformSpec(**d) == squash(base)
    with pytest.raises(ValueError, match="unknown transform kind"):
        TransformSpec(kind="letterbox")


def test_open_clip_resize_modes():
    base = TransformSpec(resize=224, crop=224)
    assert open_clip_resize_mode(base, None, "x") == base == open_clip_resize_mode(base, "shortest", "x")
    assert open_clip_resize_mode(base, "squash", "x").kind == "squash"
    with pytest.raises(InputError, match=r"^cfg\.json: .*resize_mode='longest'.*not reproduce") as e:
        open_clip_resize_mode(base, "longest", "cfg.json")
    assert "\n" not in str(e.value)


# --- geometry against a brute-force pixel computation -----------------------------------------------------------

def _centres_inside(lo, hi, size, n):
    """Input pixel i (of n) covers original [i * size / n, (i + 1) * size / n): is its centre in [lo, hi)."""
    return np.array([Fraction(lo) <= Fraction(2 * i + 1, 2) * Fraction(size, n) < Fraction(hi) for i in range(n)])


def brute_squash_mask(box, w, h, n):
    return _centres_inside(box[1], box[3], h, n)[:, None] & _centres_inside(box[0], box[2], w, n)[None, :]


def brute_patches(mask, patch, rule):
    g = mask.shape[0] // patch
    out = np.zeros((g, g), dtype=bool)
    for r in range(g):
        for c in range(g):
            cell = mask[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch]
            out[r, c] = cell.any() if rule == "any" else cell.mean() > 0.5
    return out.reshape(-1)


@st.composite
def box_in(draw):
    w, h = draw(st.sampled_from(SIZES))
    x0 = draw(st.integers(0, w - 1))
    x1 = draw(st.integers(x0 + 1, w))
    y0 = draw(st.integers(0, h - 1))
    y1 = draw(st.integers(y0 + 1, h))
    return w, h, (x0, y0, x1, y1)


def test_squash_map_is_a_pure_scale():
    assert input_map(500, 375, 224, 224, "squash") == (Fraction(224, 500), Fraction(224, 375), 0, 0)


@settings(max_examples=150, deadline=None)
@given(ib=box_in(), grid=st.sampled_from(GRIDS), rule=st.sampled_from(["any", "majority"]))
def test_squash_patch_targets_match_brute_force(ib, grid, rule):
    w, h, box = ib
    n, patch = grid
    mask = brute_squash_mask(box, w, h, n)
    c0, r0, c1, r1 = box_to_crop_pixels(box, w, h, n, n, "squash")
    rect = np.zeros((n, n), dtype=bool)
    rect[r0:r1, c0:c1] = True
    np.testing.assert_array_equal(rect, mask)
    expect = brute_patches(mask, patch, rule)
    np.testing.assert_array_equal(patch_targets([box], w, h, n, n, patch, rule, kind="squash"), expect)
    if rule == "majority":  # the artifacts evaluator's object patches are the majority rule
        np.testing.assert_array_equal(object_patches([box], (w, h), n, n, patch, "squash"), expect)


@settings(max_examples=100, deadline=None)
@given(ib=box_in(), grid=st.sampled_from(GRIDS))
def test_squash_center_rule_matches_brute_force(ib, grid):
    w, h, box = ib
    n, patch = grid
    g = n // patch
    expect = np.zeros((g, g), dtype=bool)
    for r in range(g):
        for c in range(g):
            x, y = Fraction(2 * c + 1, 2) * patch * Fraction(w, n), Fraction(2 * r + 1, 2) * patch * Fraction(h, n)
            expect[r, c] = box[0] <= x < box[2] and box[1] <= y < box[3]
    np.testing.assert_array_equal(patch_targets([box], w, h, n, n, patch, "center", kind="squash"), expect.reshape(-1))


def test_no_box_falls_outside_a_squashed_image():
    """A corner box the center crop cuts away still covers patches under squash."""
    w, h, box = 500, 375, (0, 0, 40, 375)
    assert not patch_targets([box], w, h, 224, 224, 16, "any").any()  # resize-crop: 298 wide, the crop drops 37 px each side
    assert patch_targets([box], w, h, 224, 224, 16, "any", kind="squash").reshape(14, 14)[:, 0].all()


@settings(max_examples=40, deadline=None)
@given(ib=box_in())
def test_squash_masks_follow_the_same_cells(ib):
    """A box-shaped mask / label map through mask_to_crop / labels_to_crop (torchvision NEAREST_EXACT, float
    sampling) equals the brute-force mask except on lines where a pixel centre falls exactly on a box edge."""
    w, h, box = ib
    n = 224
    m = np.zeros((h, w), dtype=bool)
    m[box[1]:box[3], box[0]:box[2]] = True
    expect = brute_squash_mask(box, w, h, n)
    for got in (mask_to_crop(m, n, n, "squash"), labels_to_crop(m.astype(np.uint8) * 7, n, n, "squash") == 7):
        assert got.shape == (n, n)
        rows, cols = np.nonzero(got ^ expect)
        c0, r0, c1, r1 = box_to_crop_pixels(box, w, h, n, n, "squash")
        near = (np.isin(rows, [r0 - 1, r0, r1 - 1, r1]) | np.isin(cols, [c0 - 1, c0, c1 - 1, c1]))
        assert near.all()
    # and the torchvision call itself is the squash (no crop): compare with a direct Resize((n, n))
    ref = TF.resize(torch.from_numpy(m.astype(np.uint8))[None], [n, n], interpolation=InterpolationMode.NEAREST_EXACT)
    np.testing.assert_array_equal(mask_to_crop(m, n, n, "squash"), ref[0].numpy().astype(bool))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("grid", GRIDS)
def test_corloc_inverse_map_under_squash(size, grid):
    """A patch box maps back to original pixels x = col * patch * w / n (and y likewise), the inverse of the squash;
    mapping it forward again lands on the same patch edges."""
    (w, h), (n, patch) = size, grid
    g = n // patch
    for pb in [(0, 0, g, g), (1, 2, 5, 9), (g - 3, 0, g, 1)]:
        got = patch_box_to_original(pb, patch, (w, h), n, n, "squash")
        want = tuple(float(Fraction(v * patch) * Fraction(s, n)) for v, s in zip(pb, (w, h, w, h), strict=True))
        assert got == pytest.approx(want, abs=1e-9)
        back = box_to_crop_coords(got, w, h, n, n, "squash")
        assert back == pytest.approx(tuple(v * patch for v in pb), abs=1e-9)


# --- a SigLIP-style tower through the CLI, and the store key -----------------------------------------------------

def _siglip(folder, mode):
    torch.manual_seed(0)
    ref = CustomTextCLIP(**{k: v for k, v in SIGLIP_CFG.items() if k != "custom_text"})
    if mode is not None:
        ref.visual.preprocess_cfg = {"resize_mode": mode, "interpolation": "bicubic"}
    _save_hf(ref, SIGLIP_CFG, folder)
    return folder / "open_clip_model.safetensors"


def test_siglip_config_resize_mode_sets_the_kind(tmp_path):
    sq = load_model(_siglip(tmp_path / "sq", "squash"))
    assert sq.transform.kind == "squash" and (sq.transform.resize, sq.transform.crop) == (32, 32)
    assert not any("not reproduced" in s or s.startswith("note:") for s in sq.keys.steps)
    assert any(s.startswith("preprocessing: open_clip resize_mode='squash'") for s in sq.keys.steps)
    plain = load_model(_siglip(tmp_path / "rc", None))
    assert plain.transform.kind == "resize-crop" and not any(s.startswith("preprocessing:") for s in plain.keys.steps)
    with pytest.raises(InputError, match=r"open_clip_config\.json: .*resize_mode='longest'"):
        load_model(_siglip(tmp_path / "lo", "longest"))


def test_store_key_differs_between_squash_and_resize_crop(tmp_path):
    from dataclasses import replace

    from lastvit_eval.engine.device import EngineSpec
    from lastvit_eval.engine.store import space_key, space_parts

    m = load_model(_siglip(tmp_path / "rc", None))
    sq = replace(m, transform=squash(m.transform))
    a, b = space_parts(m, EngineSpec(), "cpu"), space_parts(sq, EngineSpec(), "cpu")
    assert "kind" not in a["transform"] and b["transform"]["kind"] == "squash"
    assert space_key(a) != space_key(b)


def test_cli_patch_hit_on_squash_siglip_records_kind(tmp_path, imagenet_root):
    """End to end: metrics.json records kind 'squash'; the box the center crop cuts away (img_0006) is scored."""
    path = _siglip(tmp_path / "sq", "squash")
    out = tmp_path / "o"
    r = runner.invoke(app, ["run", "-e", "patch-hit", "-p", "map", "-c", str(path), "-r", str(imagenet_root),
                            "-o", str(out), "--workers", "0", "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "map" / "metrics.json").read_text())
    assert rec["provenance"]["transform"]["kind"] == "squash"
    info = rec["info"]["patch-hit"]
    assert info["evaluated"] == 6, info  # resize-crop evaluates 5: img_0006's box lies outside the center crop
    out2 = tmp_path / "o2"
    r = runner.invoke(app, ["run", "-e", "patch-hit", "-p", "map", "-c", str(_siglip(tmp_path / "rc", None)), "-r",
                            str(imagenet_root), "-o", str(out2), "--workers", "0", "--no-progress"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rec2 = json.loads((out2 / "map" / "metrics.json").read_text())
    assert "kind" not in rec2["provenance"]["transform"] and rec2["info"]["patch-hit"]["evaluated"] == 5


@pytest.mark.parametrize("mode, kind", [("squash", "squash"), ("shortest", "resize-crop")])
def test_hub_name_follows_the_pretrained_resize_mode(tmp_path, monkeypatch, mode, kind):
    """`openclip:ARCH/TAG`: the pretrained config's resize_mode decides (as open_clip's create_model_and_transforms
    does); the tiny tower's file stands in for the cached download, open_clip's config look-ups return its config."""
    import open_clip

    import lastvit_eval.models.hub as hub

    path = _siglip(tmp_path / "w", None)
    pre = {"hf_hub": "timm/tiny-siglip/", "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic",
           "resize_mode": mode}
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda arch, tag: pre)
    monkeypatch.setattr(open_clip, "get_model_config", lambda arch: json.loads(json.dumps(SIGLIP_CFG)))
    monkeypatch.setattr(hub, "cached_hf", lambda repo, files: path)
    m = load_model("openclip:Tiny-SigLIP/webli")
    assert m.transform.kind == kind and m.transform.crop == 32 and m.transform.mean == (0.5, 0.5, 0.5)
    assert any(s.startswith("preprocessing:") for s in m.keys.steps) == (kind == "squash")
    monkeypatch.setitem(pre, "resize_mode", "longest")
    with pytest.raises(InputError, match=r"^openclip:Tiny-SigLIP/webli: .*resize_mode='longest'"):
        load_model("openclip:Tiny-SigLIP/webli")
