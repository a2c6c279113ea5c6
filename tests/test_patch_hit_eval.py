"""The patch-hit evaluator on hand-made scores, and masks (COCO polygons, .npy) against boxes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import IMAGES
from typer.testing import CliRunner

from lastvit_eval.app import app
from lastvit_eval.data.masks import mask_to_crop
from lastvit_eval.errors import InputError
from lastvit_eval.evaluators.patch_hit import evaluate
from lastvit_eval.geometry import box_to_crop_pixels, mask_patch_targets, patch_targets


def test_hand_computed_hits_and_gap():
    # 2x2 grid, 3 images
    scores = np.array([[0.9, 0.1, 0.2, 0.3],   # top patch 0 (target) -> hit
                       [0.1, 0.8, 0.7, 0.0],   # top patch 1 (not target), 2nd best 2 is -> top5 hit
                       [0.5, 0.4, 0.3, 0.2]])  # target patch 3 only, worst -> top1 miss, top4 hit (k=4)
    targets = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=bool)
    r = evaluate(scores, targets, ["a", "b", "c"], (2, 2), classes=["x", "x", "y"], labels=np.array([0, 0, 1]))
    assert r.metrics["patch_hit.top1"].value == pytest.approx(100 / 3)
    assert r.metrics["patch_hit.top4"].value == pytest.approx(100.0)  # k clamps to the 4 patches
    assert list(r.rows["top_patch"]) == [0, 1, 0] and list(r.rows["top_row"]) == [0, 0, 0]
    # gaps: 0.9 - 0.2, 0.7 - 0.3, 0.2 - 0.4
    np.testing.assert_allclose(r.rows["fg_bg_gap"], [0.7, 0.4, -0.2], atol=1e-6)
    assert r.metrics["patch_hit.fg_bg_gap"].value == pytest.approx(0.3, abs=1e-6)
    assert r.metrics["patch_hit.fg_above_bg"].value == pytest.approx(200 / 3)
    per = r.tables["per_class"].set_index("class")
    assert per.loc["x", "top1"] == pytest.approx(50.0) and per.loc["y", "n"] == 1


def test_shape_errors():
    with pytest.raises(InputError):
        evaluate(np.zeros((2, 4)), np.zeros((2, 5), bool), ["a", "b"], (2, 2))
    with pytest.raises(InputError):
        evaluate(np.zeros((2, 6)), np.zeros((2, 6), bool), ["a", "b"], (2, 2))


@pytest.mark.parametrize("w,h,box", [(120, 90, (10, 12, 40, 50)), (64, 160, (5, 60, 30, 100)), (333, 500, (0, 3, 333, 17))])
def test_rectangular_mask_equals_box(w, h, box):
    mask = np.zeros((h, w), dtype=bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    crop = mask_to_crop(mask, 36, 32)
    c0, r0, c1, r1 = box_to_crop_pixels(box, w, h, 36, 32)
    ref = np.zeros((32, 32), bool)
    ref[r0:r1, c0:c1] = True
    np.testing.assert_array_equal(crop, ref)
    for rule in ("any", "majority"):
        np.testing.assert_array_equal(mask_patch_targets(crop, 8, rule), patch_targets([box], w, h, 36, 32, 8, rule))


def _coco_with_polygons(root):
    """COCO json whose segmentations are the boxes written as polygons."""
    coco = json.loads((root / "coco.json").read_text())
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    path = root / "coco_masks.json"
    path.write_text(json.dumps(coco))
    return path


def test_patch_hit_with_coco_and_npy_masks(imagenet_root, detectron2_ckpt, tmp_path):
    runner = CliRunner()
    coco = _coco_with_polygons(imagenet_root)
    npy = imagenet_root / "masks"
    npy.mkdir()
    for image_id, _, (w, h), boxes in IMAGES:
        m = np.zeros((h, w), dtype=bool)
        x0, y0, x1, y1 = boxes[0]
        m[y0:y1, x0:x1] = True
        np.save(npy / f"{image_id}.npy", m)
    outs = {}
    for name, src in (("coco", coco), ("npy", npy)):
        outs[name] = tmp_path / name
        r = runner.invoke(app, ["patch-hit", "-c", str(detectron2_ckpt), "-r", str(imagenet_root), "--masks", str(src),
                                "-o", str(outs[name]), "--pooling", "cls", "--workers", "0", "--no-progress",
                                "--any-objects", "--max-box-area", "1", "--hit-rule", "any"])
        assert r.exit_code == 0, r.output + (r.stderr or "")
    a = pd.read_csv(outs["npy"] / "cls" / "patch_hit_rows.csv")
    assert len(a) == 7  # all but the image whose object is outside the crop
    # .npy masks hold the first box only; compare with a boxes run on the same images
    r = runner.invoke(app, ["patch-hit", "-c", str(detectron2_ckpt), "-r", str(imagenet_root), "-o",
                            str(tmp_path / "boxes"), "--pooling", "cls", "--workers", "0", "--no-progress"])
    assert r.exit_code == 0
    b = pd.read_csv(tmp_path / "boxes" / "cls" / "patch_hit_rows.csv")
    merged = a.merge(b, on="image_id", suffixes=("_mask", "_box"))
    assert len(merged) == 5 and (merged["top1_mask"] == merged["top1_box"]).all()
    rec = json.loads((outs["coco"] / "cls" / "metrics.json").read_text())
    assert rec["info"]["patch-hit"]["boxes"] == str(coco)
    assert "patch_hit.fg_bg_gap" in rec["metrics"]


def test_bad_mask_inputs(imagenet_root, detectron2_ckpt, tmp_path):
    npy = imagenet_root / "masks"
    npy.mkdir()
    np.save(npy / "img_0001.npy", np.zeros((5, 5), dtype=bool))
    r = CliRunner().invoke(app, ["patch-hit", "-c", str(detectron2_ckpt), "-r", str(imagenet_root), "--masks",
                                 str(npy), "-o", str(tmp_path / "o"), "--no-progress", "--any-objects",
                                 "--max-box-area", "1"])
    assert r.exit_code == 2
    assert "all 8 images were filtered out" in (r.stderr or r.output) or "img_0001.npy" in (r.stderr or r.output)
