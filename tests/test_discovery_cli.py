"""`corloc` and `coarse-seg` through the CLI on a VOC devkit made here, against re-computations written in the
test: the vote-map box by a breadth-first search over the stored votes, IoU by pixel counting, fg/bg counts
by torch's interpolation and numpy counting."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_vit
from PIL import Image
from test_voc_data import write_palette_png, write_xml
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from typer.testing import CliRunner

from lastvit_eval.app import app
from lastvit_eval.engine.device import EngineSpec
from lastvit_eval.engine.extract import extract
from lastvit_eval.engine.taps import TapRequest
from lastvit_eval.geometry import crop_offsets, resized_size
from lastvit_eval.models import load_model
from lastvit_eval.pooling import PoolingSpec

runner = CliRunner()
VOC = [("2008_000001", (64, 48), [("cat", 17, 13, 48, 36, 0, 0)]),
       ("2008_000002", (40, 60), [("dog", 9, 21, 32, 44, 0, 1), ("dog", 1, 1, 6, 6, 1, 0)]),
       ("2008_000003", (50, 50), [("car", 10, 10, 30, 30, 0, 0)]),
       ("2008_000004", (72, 40), [("bird", 40, 5, 70, 35, 0, 0)])]


@pytest.fixture
def devkit(tmp_path: Path) -> Path:
    base = tmp_path / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(1)
    for image_id, (w, h), objects in VOC:
        img = rng.integers(30, 90, (h, w, 3), dtype=np.uint8)
        seg = np.zeros((h, w), dtype=np.uint8)
        for _, x0, y0, x1, y1, _, _ in objects:
            img[y0 - 1:y1, x0 - 1:x1] = (200, 60, 40)
            seg[y0 - 1:y1, x0 - 1:x1] = 8
        seg[0, :] = 255
        (base / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(base / "JPEGImages" / f"{image_id}.jpg", quality=95)
        write_xml(base / "Annotations" / f"{image_id}.xml", image_id, (w, h), objects)
        write_palette_png(base / "SegmentationClass" / f"{image_id}.png", seg)
    for task, name in (("Main", "trainval"), ("Segmentation", "val")):
        (base / "ImageSets" / task).mkdir(parents=True, exist_ok=True)
        (base / "ImageSets" / task / f"{name}.txt").write_text("".join(f"{i}\n" for i, _, _ in VOC))
    return tmp_path


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "vit.pth"
    torch.save(tiny_vit(seed=4).state_dict(), path)
    return path


def _components(fg: np.ndarray) -> list[list[tuple[int, int]]]:
    seen = np.zeros_like(fg, dtype=bool)
    out = []
    for r0 in range(fg.shape[0]):
        for c0 in range(fg.shape[1]):
            if fg[r0, c0] and not seen[r0, c0]:
                comp, q = [], deque([(r0, c0)])
                seen[r0, c0] = True
                while q:
                    r, c = q.popleft()
                    comp.append((r, c))
                    for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                        rr, cc = r + dr, c + dc
                        if 0 <= rr < fg.shape[0] and 0 <= cc < fg.shape[1] and fg[rr, cc] and not seen[rr, cc]:
                            seen[rr, cc] = True
                            q.append((rr, cc))
                out.append(comp)
    return out


def _votes_patches(v: np.ndarray, g: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """last-votes by hand, in patches: the 4-connected component of votes above mean + std with the largest vote
    sum (ties: the one starting first in row-major order) as (r0, r1, c0, c1), ends exclusive; None when no
    patch passes."""
    comps = _components(v > v.mean() + v.std())
    if not comps:
        return None
    best = max(comps, key=lambda c: (sum(v[rc] for rc in c), -min(r * g[1] + c_ for r, c_ in c)))
    return (min(r for r, _ in best), max(r for r, _ in best) + 1, min(c for _, c in best), max(c for _, c in best) + 1)


def _votes_box(v: np.ndarray, g: tuple[int, int], p: int, t, w: int, h: int) -> list[float] | None:
    """_votes_patches' box mapped back through the resize-crop to the original image's pixel edges, clipped to
    it; None when no patch passes."""
    if (found := _votes_patches(v, g)) is None:
        return None
    r0, r1, c0, c1 = found
    nw, nh = resized_size(w, h, t.resize)
    left, top = crop_offsets(nw, nh, t.crop)
    box = [(c0 * p + left) * w / nw, (r0 * p + top) * h / nh, (c1 * p + left) * w / nw, (r1 * p + top) * h / nh]
    return [min(max(x, 0), lim) for x, lim in zip(box, (w, h, w, h), strict=True)]


def _pixel_iou(a, b, size) -> float:
    """IoU of two pixel-edge boxes by counting 1/8-pixel cells."""
    w, h = size
    xs = (np.arange(w * 8) + 0.5) / 8
    ys = (np.arange(h * 8) + 0.5) / 8

    def mask(box):
        return ((ys[:, None] >= box[1]) & (ys[:, None] < box[3])) & ((xs[None] >= box[0]) & (xs[None] < box[2]))

    ma, mb = mask(a), mask(b)
    return (ma & mb).sum() / max((ma | mb).sum(), 1)


def test_corloc_last_votes_matches_a_hand_recomputation(devkit, ckpt, tmp_path):
    r = runner.invoke(app, ["corloc", "-c", str(ckpt), "--voc-root", str(devkit), "--image-set", "trainval",
                            "-o", str(tmp_path / "out"), "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "out" / "last-k1" / "metrics.json").read_text())
    rows = pd.read_csv(tmp_path / "out" / "last-k1" / "corloc_rows.csv", dtype={"image_id": str})
    assert list(rows.columns) == ["image_id", "x0", "y0", "x1", "y1", "iou", "hit", "status"]
    model = load_model(ckpt)
    t, g, p = model.transform, model.arch.grid, model.arch.patch_size
    paths = [devkit / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{i}.jpg" for i, _, _ in VOC]
    feats = extract(model, paths, TapRequest((PoolingSpec("last"),), frozenset({"votes"})),
                    EngineSpec(device="cpu", workers=0), progress=False)
    for n, (image_id, (w, h), objects) in enumerate(VOC):
        v = feats.arrays["votes/last-k1"][n].reshape(g).astype(np.float64)
        box = _votes_box(v, g, p, t, w, h)
        row = rows[rows["image_id"] == image_id].iloc[0]
        if box is None:
            assert row["status"] == "no_box" and not row["hit"]
            continue
        np.testing.assert_allclose(row[["x0", "y0", "x1", "y1"]].to_numpy(float), box, atol=1e-3)  # CSV: 6 digits
        gts = [(x0 - 1, y0 - 1, x1, y1) for _, x0, y0, x1, y1, _, _ in objects]  # VOC 1-based inclusive
        ious = [_pixel_iou(box, gt, (w, h)) for gt in gts]
        assert row["iou"] == pytest.approx(max(ious), abs=0.02)
        if abs(max(ious) - 0.5) > 0.02:
            assert bool(row["hit"]) == (max(ious) >= 0.5)
    m = rec["metrics"]["corloc.hit"]
    assert m["value"] == pytest.approx(100 * rows["hit"].mean()) and m["unit"] == "percent" and m["n"] == 4
    assert "LOST: full image" in rec["info"]["corloc"]["protocol"]


def _otsu_brute_force(values: np.ndarray) -> float:
    """Otsu on a 256-bin histogram (scikit-image's definition: pixels stand at their bin's centre, the cut after
    bin k maximising w0 * w1 * (m0 - m1)^2, first maximum, threshold = centre of bin k), by trying every cut
    over the pixels themselves."""
    v = values.astype(np.float64).ravel()
    edges = np.linspace(v.min(), v.max(), 257)
    centre = (edges[:-1] + edges[1:]) / 2
    b = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, 255)
    at = centre[b]  # every pixel moved to its bin's centre
    best, best_k = -1.0, 0
    for k in range(255):
        low, high = at[b <= k], at[b > k]
        if not len(low) or not len(high):
            var = 0.0
        else:
            var = len(low) * len(high) * (low.mean() - high.mean()) ** 2
        if var > best:
            best, best_k = var, k
    return float(centre[best_k])


def test_coarse_seg_counts_match_pixel_counting(devkit, ckpt, tmp_path):
    base = devkit / "VOCdevkit" / "VOC2012"
    empty = np.zeros((40, 72), dtype=np.uint8)  # 2008_000004: no object in its mask, so no fg anywhere
    empty[0, :] = 255
    write_palette_png(base / "SegmentationClass" / "2008_000004.png", empty)
    r = runner.invoke(app, ["coarse-seg", "-c", str(ckpt), "--voc-root", str(devkit), "--threshold", "mean",
                            "--threshold", "0.5", "--threshold", "otsu", "--threshold", "5", "-o",
                            str(tmp_path / "out"), "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "out" / "last-k1" / "metrics.json").read_text())
    rows = pd.read_csv(tmp_path / "out" / "last-k1" / "coarse_seg_rows.csv", dtype={"image_id": str})
    model = load_model(ckpt)
    t, g = model.transform, model.arch.grid
    feats = extract(model, [base / "JPEGImages" / f"{i}.jpg" for i, _, _ in VOC],
                    TapRequest((PoolingSpec("last"),), frozenset({"patch_scores"})), EngineSpec(device="cpu", workers=0),
                    progress=False)
    totals = {name: np.zeros(4) for name in ("mean", "0_5", "otsu", "5")}
    otsu_fg = []
    for n, (image_id, _, _) in enumerate(VOC):
        lab = torch.from_numpy(np.array(Image.open(base / "SegmentationClass" / f"{image_id}.png")))[None]
        lab = TF.center_crop(TF.resize(lab, [t.resize], interpolation=InterpolationMode.NEAREST_EXACT), [t.crop])[0]
        lab = lab.numpy()
        s = torch.from_numpy(feats.arrays["patch_scores/last-k1"][n].reshape(g))[None, None]
        smap = F.interpolate(s, size=lab.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
        row = rows[rows["image_id"] == image_id].iloc[0]
        for name, thr in (("mean", smap.mean()), ("0_5", 0.5), ("otsu", _otsu_brute_force(smap)), ("5", 5.0)):
            pred, valid = smap > thr, lab != 255
            gt = (lab != 0) & valid
            want = [(pred & gt & valid).sum(), ((pred & valid) | gt).sum(), (~pred & ~gt & valid).sum(),
                    ((~pred & valid) | (~gt & valid)).sum()]
            got = row[[f"{name}.fg_intersection", f"{name}.fg_union", f"{name}.bg_intersection",
                       f"{name}.bg_union"]].to_numpy(int)
            np.testing.assert_array_equal(got, want, err_msg=f"{image_id} {name}")
            fg = 100 * want[0] / want[1] if want[1] else float("nan")
            bg = 100 * want[2] / want[3] if want[3] else float("nan")
            np.testing.assert_allclose(row[[f"{name}.fg_iou", f"{name}.bg_iou", f"{name}.miou"]].to_numpy(float),
                                       [fg, bg, (fg + bg) / 2], atol=1e-3, err_msg=f"{image_id} {name}")
            totals[name] += want
            if name == "otsu":
                otsu_fg.append((int((pred & valid).sum()), int(valid.sum())))
    # the last image: no object and (threshold 5, above any cosine) no prediction -> fg union 0 -> NaN fg and miou
    last = rows[rows["image_id"] == "2008_000004"].iloc[0]
    assert np.isnan(last["5.fg_iou"]) and np.isnan(last["5.miou"]) and last["5.bg_iou"] == 100.0
    assert all(0 < fg < valid for fg, valid in otsu_fg)  # Otsu split every map (neither all nor nothing)
    for name, c in totals.items():
        fg, bg = c[0] / c[1], c[2] / c[3]
        assert rec["metrics"][f"coarse_seg.{name}.miou"]["value"] == pytest.approx(100 * (fg + bg) / 2)
        assert rec["metrics"][f"coarse_seg.{name}.fg_iou"]["value"] == pytest.approx(100 * fg)


def test_discovery_checks_fail_before_any_forward(devkit, ckpt, tmp_path, forwarded):
    for args, msg in ((["corloc", "-p", "cls"], "votes exist for LAST poolings only"),
                      (["coarse-seg", "--threshold", "high"], "--threshold 'high'"),
                      (["corloc", "--year", "2007"], "no VOC2007/JPEGImages")):
        r = runner.invoke(app, [*args, "-c", str(ckpt), "--voc-root", str(devkit), "-o", str(tmp_path / "o"),
                                "--no-progress"])
        assert r.exit_code == 2 and msg in r.output, r.output
    assert forwarded == []
