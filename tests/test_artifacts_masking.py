"""The masking probe in the forward: dropped patches are absent, no drop equals classify, the ranking side.

References: torchvision's own encoder run on hand-gathered tokens (as tests/test_internals.py does), cosine
similarity from torch.nn.functional on those reference tokens, numpy's argsort for the ranking. Tolerance
1e-5 (fp32, the same operations in a different order).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_vit
from timm.models.vision_transformer import VisionTransformer as TimmViT
from tiny_models import _perturb

from lastvit_eval.engine.taps import TapRequest, dropped_logits, forward_taps, keep_indices
from lastvit_eval.masking import drop_count, masked_tap, parse_masked
from lastvit_eval.models.dino_vit import TimmBackbone
from lastvit_eval.models.torchvision_vit import TorchvisionBackbone
from lastvit_eval.pooling import PoolingSpec

TOL = 1e-5
POOLINGS = (PoolingSpec("cls"), PoolingSpec("gap"), PoolingSpec("last", topk=2))


class _Arch:
    num_classes = 10
    embed_dim = None


def _model(bb):
    class Model:  # forward_taps reads the backbone and the arch's optional outputs
        backbone = bb
        arch = _Arch()
        has_class_token = True

    return Model()


def _reference_tokens(m, x, keep=None):
    """torchvision's own modules: embed, add positions, gather the kept patches by hand, encoder + ln."""
    t = m._process_input(x)
    t = torch.cat([m.class_token.expand(len(x), -1, -1), t], 1) + m.encoder.pos_embedding
    if keep is not None:
        t = torch.cat([t[:, :1], torch.stack([t[i, 1 + keep[i]] for i in range(len(x))])], 1)
    return m.encoder.ln(m.encoder.layers(t))


def test_tap_names_round_trip_and_rounding_is_half_up_at_least_one():
    assert masked_tap("top", 0.25) == "masked_logits@top0.25"
    assert parse_masked("masked_logits@bottom0.5") == ("bottom", 0.5)
    assert parse_masked("logits") is None and parse_masked("masked_logits@top1.5") is None
    assert TapRequest((PoolingSpec("cls"),), frozenset({masked_tap("top", 0.1)}))  # a valid tap
    with pytest.raises(ValueError):
        TapRequest((PoolingSpec("cls"),), frozenset({"masked_logits@side0.1"}))
    # fraction x patches: 0.25 x 16 = 4; 0.01 x 16 = 0.16 -> at least 1; 0.125 x 4 = 0.5 -> 1; 0.375 x 4 = 1.5 -> 2
    assert [drop_count(f, p) for f, p in ((0.25, 16), (0.01, 16), (0.125, 4), (0.375, 4), (0.5, 196))] == [4, 1, 1, 2, 98]


def test_ranking_drops_the_right_side():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3, 0.9]])
    ref = np.argsort(-scores.numpy()[0], kind="stable")  # highest first, ties by index
    top = keep_indices(scores, "top", 2)
    bottom = keep_indices(scores, "bottom", 2)
    assert top.tolist() == [sorted(ref[2:].tolist())]  # the two highest (1 and 5) are gone
    assert bottom.tolist() == [sorted(ref[:4].tolist())]  # the two lowest (0 and 4) are gone
    assert 1 not in top[0] and 5 not in top[0] and 0 not in bottom[0] and 4 not in bottom[0]


@pytest.mark.parametrize("spec", POOLINGS, ids=lambda s: s.name)
def test_no_patch_dropped_equals_classify_logits(spec):
    m = tiny_vit(seed=11)
    bb = TorchvisionBackbone(m, has_head=True)
    x = torch.randn(3, 3, 32, 32)
    logits = forward_taps(_model(bb), x, TapRequest((spec,), frozenset({"logits"})), "fp32")[f"logits/{spec.name}"]
    every = torch.arange(16).expand(3, -1)
    assert (dropped_logits(bb, x, spec, every, "fp32") - logits).abs().max() < TOL


@pytest.mark.parametrize("side", ["top", "bottom"])
def test_masked_logits_tap_matches_a_forward_without_those_patches(side):
    """The tap: rank by cosine to the pooled token, drop round(F x P), forward the rest, pool, head."""
    m = tiny_vit(seed=12)
    bb = TorchvisionBackbone(m, has_head=True)
    x = torch.randn(2, 3, 32, 32)
    tap = masked_tap(side, 0.25)
    req = TapRequest((PoolingSpec("cls"), PoolingSpec("gap")), frozenset({tap, "logits"}))
    out = forward_taps(_model(bb), x, req, "fp32")
    with torch.no_grad():
        full = _reference_tokens(m, x)
        for name, pooled_of in (("cls", lambda t: t[:, 0]), ("gap", lambda t: t[:, 1:].mean(1))):
            scores = F.cosine_similarity(full[:, 1:], pooled_of(full)[:, None], dim=-1).numpy()
            order = np.argsort(-scores, axis=1, kind="stable")
            kept = order[:, 4:] if side == "top" else order[:, :12]  # 4 = round(0.25 x 16) dropped
            keep = torch.from_numpy(np.sort(kept, axis=1))
            ref = m.heads(pooled_of(_reference_tokens(m, x, keep)))
            assert (out[f"{tap}/{name}"] - ref).abs().max() < TOL
            assert not torch.allclose(out[f"{tap}/{name}"], out[f"logits/{name}"])  # dropping changed something


def test_dropped_patches_are_absent_from_the_forward():
    m = tiny_vit(seed=13)
    bb = TorchvisionBackbone(m, has_head=True)
    x = torch.randn(2, 3, 32, 32)  # 4x4 grid of 8-pixel patches
    keep = torch.tensor([[0, 2, 5, 7, 10, 15], [1, 3, 4, 8, 12, 14]])
    seen = []
    # the first block's output has one row per token that entered it (a pre-hook of ours would run before the drop)
    h = m.encoder.layers[0].register_forward_hook(lambda _m, _a, out: seen.append(out.shape[1]))
    try:
        base = {s.name: dropped_logits(bb, x, s, keep, "fp32") for s in POOLINGS}
    finally:
        h.remove()
    assert seen == [1 + 6] * len(POOLINGS)  # CLS + the kept patches enter the first block, nothing else
    y = x.clone()
    y[0, :, 0:8, 8:16] = 7.0  # patch 1 of image 0 (dropped)
    y[1, :, 24:32, 24:32] = -7.0  # patch 15 of image 1 (dropped)
    for s in POOLINGS:
        assert torch.equal(dropped_logits(bb, y, s, keep, "fp32"), base[s.name])
    y[0, :, 0:8, 0:8] = 7.0  # patch 0 of image 0 is kept: now the logits move
    assert not torch.equal(dropped_logits(bb, y, PoolingSpec("cls"), keep, "fp32"), base["cls"])


def test_registers_always_stay_and_no_drop_equals_the_head_on_timm():
    torch.manual_seed(14)
    m = TimmViT(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3, num_classes=10, reg_tokens=4).eval()
    _perturb(m, ("norm", "head"))
    bb = TimmBackbone(m)
    assert bb.num_prefix_tokens == 5
    x = torch.randn(2, 3, 32, 32)
    seen = []
    h = m.blocks[0].register_forward_hook(lambda _m, _a, out: seen.append(out.shape[1]))
    try:
        out = forward_taps(_model(bb), x, TapRequest((PoolingSpec("cls"),), frozenset({"logits", masked_tap(
            "bottom", 0.5)})), "fp32")
    finally:
        h.remove()
    assert seen == [5 + 16, 5 + 8]  # the full forward, then CLS + 4 registers + the 8 kept patches
    with torch.no_grad():
        ref = m.forward_head(m.forward_features(x))
    assert (out["logits/cls"] - ref).abs().max() < TOL
    every = torch.arange(16).expand(2, -1)
    assert (dropped_logits(bb, x, PoolingSpec("cls"), every, "fp32") - ref).abs().max() < TOL


def test_masked_taps_only_for_models_with_a_head():
    class NoHead:
        num_classes = None
        embed_dim = None

    class Model:
        arch = NoHead()

    req = TapRequest((PoolingSpec("cls"),), frozenset({"logits", masked_tap("top", 0.5), "block_norms"}))
    assert req.keys(Model()) == ["block_norms"]
    assert req.keys(_model(None)) == ["block_norms", "logits/cls", "masked_logits@top0.5/cls"]


def test_widening_stores_cheap_taps_of_other_poolings_but_runs_the_probe_only_for_those_asked():
    from lastvit_eval.engine.extract import widened

    m = tiny_vit(seed=15)
    bb = TorchvisionBackbone(m, has_head=True)
    model = _model(bb)
    req = widened(model, TapRequest((PoolingSpec("cls"),), frozenset({"logits", masked_tap("top", 0.25)})))
    assert {p.name for p in req.poolings} == {"cls", "gap", "last-k1"}
    assert [k for k in req.keys(model) if k.startswith("masked")] == ["masked_logits@top0.25/cls"]
    seen = []
    h = m.encoder.layers[0].register_forward_hook(lambda _m, _a, out: seen.append(out.shape[1]))
    try:
        out = forward_taps(model, torch.randn(1, 3, 32, 32), req, "fp32")
    finally:
        h.remove()
    assert seen == [17, 13] and "masked_logits@top0.25/gap" not in out  # one full forward, one masked (cls)
