"""CorLoc: the share of images whose single predicted box has IoU >= 0.5 with at least one ground-truth box.

The protocol of LOST (valeoai/LOST), which the published CorLoc numbers (DINO-seg, LOST, DINO + LaSt on
VOC07 trainval, VOC12 trainval, COCO20k) follow; read in `main_lost.py` (main loop),
`main_corloc_evaluation.py`, `datasets.py` (`Dataset`, `extract_gt_VOC`, `extract_gt_COCO`,
`discard_hard_voc`, `bbox_iou`) and `object_discovery.py` (`lost`, `detect_box`, `dino_seg`):

* Images: every image of the set (VOC `ImageSets/Main/trainval.txt` through torchvision's VOCDetection;
  COCO20k: the 19,817 listed train2014 images). The README's commands do not pass `--no_hard`, so no image
  is dropped; with `--no_hard` an image whose objects are all truncated or difficult is skipped.
* Boxes that count: VOC, all objects, difficult and truncated included (`extract_gt_VOC(remove_hards=False)`),
  XML (xmin, ymin, xmax, ymax) -> (xmin - 1, ymin - 1, xmax, ymax); COCO, every non-crowd annotation,
  xywh -> xyxy rounded to integers (`extract_gt_COCO(remove_iscrowd=True)`). See `data/voc.py`,
  `data/coco_subset.py`.
* Resolution: the original image (ToTensor + ImageNet normalisation, no resize), zero-padded (after
  normalisation: the mean colour) at the bottom/right up to the next multiple of the patch size, not
  cropped; the grid is ceil(h / p) x ceil(w / p) (`boxes_from_maps.padded_grid`); a patch box is scaled by the patch size and its x1/y1
  clipped to the image (`detect_box`; `dino_seg` does not clip). See `boxes_from_maps.py`.
* IoU: `bbox_iou` (from yolov5) on pixel-edge boxes without any +1: inter = overlap widths x heights
  clamped at 0, union = area1 + area2 - inter (its eps terms, 1e-7, vanish in the float32 it runs in at
  VOC/COCO box sizes, so an IoU of exactly 0.5 counts). Hit: `any(iou >= 0.5)`.
* CorLoc = hits / images evaluated, printed with two decimals.

Choices here: the hit test is exact (2 * inter >= union in float64, no eps); an image without a predicted
box (e.g. all-zero LAST votes) is a miss and is reported; an image without any counted ground-truth box
is left out of the denominator and reported (LOST would crash on it: `bbox_iou` of an empty array; it does
not occur in the published sets). The 95% interval is Wilson's (stats.proportion).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..result import Metric
from ..stats import proportion

BoxLike = Sequence[float] | np.ndarray


def _as_boxes(boxes) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def box_intersection_union(box: BoxLike, boxes) -> tuple[np.ndarray, np.ndarray]:
    """Intersection and union areas of one pixel-edge box (x0, y0, x1, y1) with each of `boxes` [n, 4]."""
    b = np.asarray(box, dtype=np.float64).reshape(4)
    g = _as_boxes(boxes)
    iw = np.clip(np.minimum(b[2], g[:, 2]) - np.maximum(b[0], g[:, 0]), 0, None)
    ih = np.clip(np.minimum(b[3], g[:, 3]) - np.maximum(b[1], g[:, 1]), 0, None)
    inter = iw * ih
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    area_g = np.clip(g[:, 2] - g[:, 0], 0, None) * np.clip(g[:, 3] - g[:, 1], 0, None)
    return inter, area_b + area_g - inter


def box_iou(box: BoxLike, boxes) -> np.ndarray:
    """IoU of one box with each of `boxes` (pixel-edge, x1/y1 exclusive, no +1); 0 where the union is empty."""
    inter, union = box_intersection_union(box, boxes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass
class CorLocResult:
    metric: Metric  # percent of counted images with a hit, Wilson 95% CI
    hit: np.ndarray  # bool [n images]; False for images not counted
    best_iou: np.ndarray  # float [n images]; nan without a box or without ground truth
    counted: np.ndarray  # bool [n images]: has at least one ground-truth box
    has_box: np.ndarray  # bool [n images]: a box was predicted

    @property
    def n_no_box(self) -> int:
        """Counted images without a predicted box (each is a miss)."""
        return int((self.counted & ~self.has_box).sum())

    @property
    def n_no_gt(self) -> int:
        """Images left out because no ground-truth box counts."""
        return int((~self.counted).sum())

    def rows(self, image_ids: Sequence[str], boxes: Sequence[BoxLike | None], column: str = "corloc") -> pd.DataFrame:
        """Per-image rows: image_id, the hit (named `column`: Result's convention pairs metric `<ns>.corloc` with a
        boolean column `corloc`), iou, the predicted box, and status (scored, no_box: a miss, no_gt: left out)."""
        status = np.where(~self.counted, "no_gt", np.where(~self.has_box, "no_box", "scored"))
        b = np.array([np.full(4, np.nan) if x is None else np.asarray(x, dtype=np.float64) for x in boxes])
        return pd.DataFrame({"image_id": list(image_ids), column: self.hit, "iou": self.best_iou,
                             "x0": b[:, 0], "y0": b[:, 1], "x1": b[:, 2], "y1": b[:, 3], "status": status})


def corloc(pred_boxes: Sequence[BoxLike | None], gt_boxes: Sequence, threshold: float = 0.5) -> CorLocResult:
    """CorLoc over images: one predicted box (or None) and the ground-truth boxes [n_i, 4] per image.

    Hit when IoU >= threshold with any ground-truth box, tested exactly as inter >= threshold * union.
    """
    if len(pred_boxes) != len(gt_boxes):
        raise ValueError(f"{len(pred_boxes)} predicted boxes for {len(gt_boxes)} images")
    n = len(pred_boxes)
    hit = np.zeros(n, dtype=bool)
    best = np.full(n, np.nan)
    counted = np.zeros(n, dtype=bool)
    has_box = np.zeros(n, dtype=bool)
    for i, (pred, gts) in enumerate(zip(pred_boxes, gt_boxes, strict=True)):
        g = _as_boxes(gts)
        counted[i] = len(g) > 0
        has_box[i] = pred is not None
        if not (counted[i] and has_box[i]):
            continue
        inter, union = box_intersection_union(pred, g)
        hit[i] = bool(np.any((inter >= threshold * union) & (union > 0)))
        best[i] = float(box_iou(pred, g).max())
    return CorLocResult(proportion(hit[counted]), hit, best, counted, has_box)
