"""Artifact statistics against brute force: norms from timm's own blocks run one by one, outliers counted
token by token, object patches from a pixel-by-pixel mask, and the options' refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT
from tiny_models import _perturb

from lastvit_eval.engine.taps import TapRequest, forward_taps
from lastvit_eval.errors import InputError
from lastvit_eval.evaluators.artifacts import (
    Artifacts,
    ArtifactsOptions,
    evaluate,
    masking_metrics,
    object_patches,
    token_layout,
)
from lastvit_eval.models.dino_vit import TimmBackbone
from lastvit_eval.pooling import PoolingSpec

TOL = 1e-4


def _timm(reg_tokens: int, class_token: bool = True, seed: int = 21) -> TimmViT:
    torch.manual_seed(seed)
    m = TimmViT(img_size=32, patch_size=8, embed_dim=192, depth=3, num_heads=3, num_classes=0, reg_tokens=reg_tokens,
                class_token=class_token, global_pool="token" if class_token else "avg").eval()
    _perturb(m, ("norm",))
    with torch.no_grad():  # make a few patch tokens stand out after the last block, as artifacts do
        m.blocks[-1].mlp.fc2.bias.zero_()
    return m


def _brute_norms(m: TimmViT, x: torch.Tensor) -> np.ndarray:
    """[B, depth, T] token norms, the blocks run one by one (before the final norm)."""
    with torch.no_grad():
        t = m.norm_pre(m._pos_embed(m.patch_embed(x)))
        out = []
        for b in m.blocks:
            t = b(t)
            out.append([[math.sqrt(float((t[i, j] ** 2).sum())) for j in range(t.shape[1])] for i in range(len(x))])
    return np.transpose(np.array(out), (1, 0, 2))


@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_norms_outliers_and_registers_against_brute_force(reg_tokens):
    m = _timm(reg_tokens)
    bb = TimmBackbone(m)
    assert token_layout(bb) == (True, reg_tokens)
    x = torch.randn(5, 3, 32, 32)
    x[:, :, :8, :8] *= 6  # one loud corner patch per image
    with torch.no_grad():  # the engine runs under no_grad too
        out = forward_taps(type("M", (), {"backbone": bb, "arch": None})(), x,
                           TapRequest((PoolingSpec("gap"),), frozenset({"block_norms", "patch_scores"})), "fp32")
    ref = _brute_norms(m, x)
    assert np.abs(out["block_norms"].numpy() - ref).max() < TOL
    ratio = 1.15
    res = evaluate(out["block_norms"].numpy(), [f"i{k}" for k in range(5)], True, reg_tokens,
                   scores=out["patch_scores/gap"].numpy(), ratio=ratio, blocks=True, grid=(4, 4))
    rows = res.rows
    prefix = 1 + reg_tokens
    total_out, cos_out = 0, []
    for i in range(5):
        last = ref[i, -1]
        patches = sorted(last[prefix:])
        median = (patches[7] + patches[8]) / 2  # 16 patches
        outl = [j for j in range(16) if last[prefix + j] > ratio * median]
        total_out += len(outl)
        cos_out.append(np.mean([float(out["patch_scores/gap"][i, j]) for j in outl]) if outl else np.nan)
        assert abs(rows["cls_norm"][i] - last[0]) < TOL
        for r in range(reg_tokens):
            assert abs(rows[f"reg{r}_norm"][i] - last[1 + r]) < TOL
        assert abs(rows["patch_norm_median"][i] - median) < TOL
        assert abs(rows["patch_norm_max"][i] - patches[-1]) < TOL
        assert rows["outliers"][i] == len(outl)
        for j in range(3):  # per block, same rule on that block's norms
            bp = sorted(ref[i, j, prefix:])
            assert rows[f"block{j:02d}.outliers"][i] == sum(v > ratio * (bp[7] + bp[8]) / 2 for v in bp)
    assert 0 < total_out < 5 * 16  # the case is not trivial
    assert abs(res.metrics["artifacts.outlier_share"].value - 100 * total_out / 80) < 1e-9
    got = rows["outlier_cosine"].to_numpy()
    assert np.allclose(got, cos_out, atol=1e-6, equal_nan=True)
    assert ("artifacts.register_norm" in res.metrics) == (reg_tokens > 0)
    assert list(res.tables["blocks"]["block"]) == [0, 1, 2]
    for key in res.metrics:  # every metric has a declared unit and direction
        Artifacts().metric_info(key)


def test_no_class_token_with_registers():
    bb = TimmBackbone(_timm(2, class_token=False))
    assert bb.num_prefix_tokens == 2 and token_layout(bb) == (False, 2)
    norms = np.ones((1, 1, 2 + 16))
    norms[0, 0, 2 + 5] = 10.0
    res = evaluate(norms, ["a"], False, 2, ratio=3.0)
    assert "cls_norm" not in res.rows and list(res.rows["outliers"]) == [1]


def _brute_object(boxes, w, h, resize, crop, patch):
    """A crop pixel is inside when its centre, mapped back to the original image, lies in a box; a patch is
    inside when more than half its pixels are (torchvision's Resize(short side) + CenterCrop, literally)."""
    nw, nh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    left, top = int(round((nw - crop) / 2.0)), int(round((nh - crop) / 2.0))
    mask = np.zeros((crop, crop), dtype=bool)
    for r in range(crop):
        for c in range(crop):
            ox, oy = (c + left + 0.5) * w / nw, (r + top + 0.5) * h / nh
            mask[r, c] = any(x0 <= ox < x1 and y0 <= oy < y1 for x0, y0, x1, y1 in boxes)
    g = crop // patch
    frac = mask.reshape(g, patch, g, patch).mean(axis=(1, 3))
    return (frac > 0.5).reshape(-1)


@pytest.mark.parametrize("boxes,size", [([(10, 12, 40, 50)], (120, 90)), ([(5, 60, 30, 100), (40, 5, 60, 30)], (64, 160)),
                                        ([(20.5, 20.5, 61.3, 60)], (96, 96))])
def test_inside_object_share_against_a_pixel_mask(boxes, size):
    resize, crop, patch = 36, 32, 8
    tg = object_patches(boxes, size, resize, crop, patch)
    ref = _brute_object(boxes, *size, resize, crop, patch)
    assert np.array_equal(tg, ref) and ref.any()
    rng = np.random.default_rng(0)
    norms = rng.uniform(1, 2, size=(1, 1, 1 + 16))
    loud = [0, 5, 6, 9, 15]
    norms[0, 0, 1 + np.array(loud)] = 50.0
    res = evaluate(norms, ["a"], True, 0, targets={"a": tg}, ratio=3.0)
    inside = sum(bool(ref[j]) for j in loud)
    assert res.rows["outliers_in_object"][0] == inside
    assert abs(res.rows["outlier_in_object_share"][0] - 100 * inside / len(loud)) < 1e-9
    assert abs(res.metrics["artifacts.object_area"].value - 100 * ref.mean()) < 1e-9


def test_absolute_threshold_and_masking_accuracy():
    norms = np.array([[[1.0, 1, 2, 3, 40]], [[1.0, 5, 5, 5, 5]]])  # CLS + 4 patches
    res = evaluate(norms, ["a", "b"], True, 0, threshold=4.5)
    assert list(res.rows["outliers"]) == [1, 4]
    assert res.metrics["artifacts.outlier_share"].value == pytest.approx(100 * 5 / 8)
    y = np.array([2, 0])
    base = np.array([[0, 0, 1.0], [1.0, 0, 0]])  # both right
    masked = {("top", 0.25): np.array([[0, 1.0, 0], [1.0, 0, 0]])}  # first now wrong
    masking_metrics(res, base, masked, y)
    assert res.metrics["artifacts.unmasked.top1"].value == 100
    assert res.metrics["artifacts.drop_top25.top1"].value == 50
    assert res.metrics["artifacts.drop_top25.delta_top1"].value == -50
    assert list(res.rows["drop_top25.top1"]) == [False, True]


@pytest.mark.parametrize("kw,msg", [({"mask_top": (1.5,)}, "--mask-top 1.5"), ({"mask_bottom": (0.0,)}, "--mask-bottom"),
                                    ({"norm_ratio": 1.0}, "--norm-ratio"), ({"norm_threshold": -1.0}, "--norm-threshold")])
def test_bad_options_are_one_line(kw, msg):
    with pytest.raises(InputError, match=msg):
        ArtifactsOptions(**kw)


def test_probe_taps_only_when_asked():
    assert Artifacts().taps == {"block_norms", "patch_scores"} and not Artifacts().needs
    e = Artifacts(ArtifactsOptions(mask_top=(0.25, 0.25), mask_bottom=(0.5,)))
    assert e.taps == {"block_norms", "patch_scores", "logits", "masked_logits@top0.25", "masked_logits@bottom0.5"}
    assert e.needs == {"labels"}
