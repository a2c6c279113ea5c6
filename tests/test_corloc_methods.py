"""corloc's `lost` and `dino-seg` boxes in original pixels (the evaluator's own path: grid from the image size,
padded to the patch, scaled, clipped or not) against torch transcriptions of valeoai/LOST `object_discovery.py`
(`lost`, `patch_scoring`, `detect_box`, `dino_seg`) and `main_lost.py` (grid = ceil(h/p) x ceil(w/p), scales =
patch size, `init_image_size` clip), written here, on random keys and attention over non-square grids.

The one deliberate difference from LOST, shared by the transcription: ties in the degree sort go to the lower
patch index (a stable sort; LOST's torch.argsort is not stable)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch

from lastvit_eval.evaluators.corloc import CorLoc, CorLocOptions


def lost_transcribed(feats: torch.Tensor, dims, patch: int, image_hw, k_patches: int = 100) -> list[float]:
    a = feats @ feats.transpose(0, 1)
    c = a.clone()
    c.fill_diagonal_(0)
    c[c < 0] = 0
    cent = -torch.sum(c > 0, dim=1).type(torch.float32)
    order = torch.argsort(cent, descending=True, stable=True)
    seed = order[0]
    potentials = order[:k_patches]
    similars = potentials[a[seed, potentials] > 0.0]
    m = torch.sum(a[similars, :], dim=0)
    labeled, _ = scipy.ndimage.label(m.reshape(dims).numpy() > 0.0)
    cc = labeled[np.unravel_index(int(seed), dims)]
    assert cc != 0
    ys, xs = np.where(labeled == cc)
    pred = [patch * xs.min(), patch * ys.min(), patch * (xs.max() + 1), patch * (ys.max() + 1)]
    pred[2], pred[3] = min(pred[2], image_hw[1]), min(pred[3], image_hw[0])
    return [float(v) for v in pred]


def dino_seg_transcribed(attn: torch.Tensor, dims, patch: int, head: int) -> list[float]:
    nh = attn.shape[0]
    val, idx = torch.sort(attn, stable=True)
    val = val / torch.sum(val, dim=1, keepdim=True)
    th = torch.cumsum(val, dim=1) > (1 - 0.6)
    idx2 = torch.argsort(idx)
    for h in range(nh):
        th[h] = th[h][idx2[h]]
    th = th.reshape(nh, *dims).float()
    labeled, _ = scipy.ndimage.label(th[head].numpy())
    sizes = [np.sum(labeled == c) for c in range(np.max(labeled))]
    biggest = np.argmax(sizes[1:]) + 1 if len(sizes) > 1 else 0
    ys, xs = np.where(labeled == biggest)
    return [float(v) for v in (xs.min() * patch, ys.min() * patch, (xs.max() + 1) * patch, (ys.max() + 1) * patch)]


def evaluator(method: str, image_size, patch: int, **options) -> CorLoc:
    """A corloc evaluator as `check` leaves it for a full-resolution run on one image `x`."""
    ev = CorLoc(CorLocOptions(method=method, **options))
    ev.sizes, ev.full, ev.patch = {"x": image_size}, True, patch
    ev.resize = ev.crop = 0
    ev.grid = (0, 0)
    return ev


SIZES = [(100, 75), (64, 64), (37, 90), (130, 41)]  # (w, h): padded and exact multiples of the patch


@pytest.mark.parametrize("seed", range(6))
def test_lost_boxes_match_the_transcription(seed):
    rng = np.random.default_rng(seed)
    w, h = SIZES[seed % len(SIZES)]
    patch = 8 if seed % 2 else 16
    dims = (math.ceil(h / patch), math.ceil(w / patch))
    n = dims[0] * dims[1]
    keys = rng.normal(size=(n, 24)) + rng.normal(size=24) * (seed % 3)  # a shared direction: long components
    obj = rng.random(n) < 0.3
    keys[obj] += rng.normal(size=24) * 2
    k = [100, 5, 1][seed % 3]
    ev = evaluator("lost", (w, h), patch, k_patches=k)
    got = ev.box("x", keys.astype(np.float16).astype(np.float32))  # what the fp16 tap hands over
    want = lost_transcribed(torch.tensor(keys.astype(np.float16).astype(np.float64)), dims, patch, (h, w), k)
    assert list(got) == pytest.approx(want)
    assert got[2] <= w and got[3] <= h


@pytest.mark.parametrize("seed", range(6))
def test_dino_seg_boxes_match_the_transcription(seed):
    rng = np.random.default_rng(100 + seed)
    w, h = SIZES[seed % len(SIZES)]
    patch = 16
    dims = (math.ceil(h / patch), math.ceil(w / patch))
    heads = 6
    logits = rng.normal(size=(heads, dims[0] * dims[1])) * (1 + seed % 3)
    attn = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True) * 0.9  # CLS-to-CLS takes the rest
    head = seed % heads
    ev = evaluator("dino-seg", (w, h), patch, dinoseg_head=head)
    got = ev.box("x", attn.astype(np.float32))
    want = dino_seg_transcribed(torch.tensor(attn.astype(np.float32).astype(np.float64)), dims, patch, head)
    assert list(got) == pytest.approx(want)  # not clipped to the image, as LOST's dino_seg


def test_dino_seg_default_head_is_losts_component_rule_and_no_clip():
    """--dinoseg-head defaults to main_lost.py's 4; LOST's rule never takes the last-labelled component, and
    its box is not clipped to the image (here it covers the padding)."""
    assert CorLocOptions().dinoseg_head == 4
    w, h, patch = 50, 40, 16  # grid 3 x 4, padded to 64 x 48
    a = np.full((3, 4), 0.22)  # unkept: together under 40% of the mass
    a[0, 0] = a[2, 0] = 0.5  # two single-patch components (labels 1 and 3)
    a[:, 3] = 0.5  # a column of three (label 2)
    attn = np.full((6, 12), 1.0)
    attn[4] = a.reshape(-1)
    box = evaluator("dino-seg", (w, h), patch).box("x", attn)
    assert box == (48.0, 0.0, 64.0, 48.0)


def test_method_taps_and_resolution_defaults():
    assert CorLoc(CorLocOptions("lost")).taps == frozenset({"keys"})
    assert CorLoc(CorLocOptions("dino-seg")).taps == frozenset({"cls_attn"})
    assert CorLoc(CorLocOptions("last-votes")).taps == frozenset({"votes"})
    assert CorLoc(CorLocOptions("lost")).input_resolution == "full"
    assert CorLoc(CorLocOptions("last-votes")).input_resolution == "model"
    assert CorLoc(CorLocOptions("last-votes", resolution="full")).input_resolution == "full"
