"""The pieces composed as an evaluator would: VOC devkit files -> votes on the crop grid -> vote-map box ->
original pixels -> CorLoc; and LOST at full resolution with padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from test_voc_data import write_xml

from lastvit_eval.data.voc import VOCDataset
from lastvit_eval.geometry import patch_targets
from lastvit_eval.localization.boxes_from_maps import (
    padded_grid,
    patch_box_to_full_res,
    patch_box_to_original,
    vote_map_box,
)
from lastvit_eval.localization.corloc import box_iou, corloc
from lastvit_eval.localization.lost import lost

RESIZE, CROP, PATCH = 32, 32, 4
# id, (w, h), objects in VOC 1-based inclusive pixels
IMAGES = [("000001", (64, 48), [("cat", 17, 13, 48, 36, 0, 0)]),
          ("000002", (40, 60), [("dog", 9, 21, 32, 44, 0, 1), ("dog", 1, 1, 6, 6, 1, 0)]),
          ("000003", (50, 50), [("car", 10, 10, 30, 30, 0, 0)])]


def make_devkit(root: Path) -> None:
    base = root / "VOCdevkit" / "VOC2012"
    (base / "JPEGImages").mkdir(parents=True)
    (base / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, (w, h), objects in IMAGES:
        Image.new("RGB", (w, h), (90, 120, 30)).save(base / "JPEGImages" / f"{image_id}.jpg")
        write_xml(base / "Annotations" / f"{image_id}.xml", image_id, (w, h), objects)
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i, _, _ in IMAGES))


def test_vote_boxes_on_voc_give_the_expected_corloc(tmp_path: Path):
    make_devkit(tmp_path)
    ds = VOCDataset(tmp_path, "2012")
    ids = ds.image_ids("trainval")
    preds, gts = [], []
    for n, image_id in enumerate(ids):
        ann = ds.annotation(image_id)
        # "votes": high on the patches mostly inside the first object, as a perfect model would cast them;
        # the last image gets no votes at all (no box: a miss)
        target = patch_targets([ann.objects[0].box], *ann.size, RESIZE, CROP, PATCH, rule="majority")
        votes = target.astype(float) * 50 if n < 2 else np.zeros(target.size)
        found = vote_map_box(votes, grid=(CROP // PATCH, CROP // PATCH))
        preds.append(None if found is None else patch_box_to_original(found.box, PATCH, ann.size, RESIZE, CROP))
        gts.append(ann.boxes())
    res = corloc(preds, gts)
    assert res.hit.tolist() == [True, True, False] and res.n_no_box == 1
    assert res.metric.value == 100 * 2 / 3
    for pred, gt in zip(preds[:2], gts[:2], strict=True):
        assert box_iou(pred, gt[:1])[0] > 0.7  # a patch-quantised copy of the object box


def test_lost_at_full_resolution_with_padding():
    w, h, patch = 37, 27, 8  # padded to 40x32: a 4x5 grid
    grid = padded_grid((w, h), patch)
    assert grid == (4, 5)
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(20, 8)) * 0.1 - 1.0  # background keys agree with each other: high degree
    obj = [13, 14, 18, 19]  # bottom-right 2x2 patches, the last column partly padding
    keys[obj] = rng.normal(size=(4, 8)) * 0.1 + 3.0  # object keys point the other way
    res = lost(keys, grid)
    assert res.seed in obj and res.box == (3, 2, 5, 4)
    assert patch_box_to_full_res(res.box, patch, (w, h)) == (24.0, 16.0, 37.0, 27.0)
