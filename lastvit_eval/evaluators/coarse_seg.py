"""Coarse segmentation from patch scores: foreground / background IoU against VOC segmentation masks.

Per image, the patch scores (cosine of every patch with the pooled token, as point-in-box uses) are
upsampled bilinearly (align_corners=False) to the evaluated crop, thresholded (`--threshold mean`,
`otsu` or a number; repeatable, every one reported) and compared with the mask's foreground (any of the
20 classes) and background, ignore label 255 excluded. Intersections and unions are summed over images
before dividing; the mean of foreground and background IoU is `coarse_seg.<threshold>.miou`, with a
bootstrap interval over images. Per-image rows (`coarse_seg_rows.csv`) hold, per threshold, the four counts
and that image's `fg_iou`, `bg_iou`, `miou` in percent (NaN where a union is 0; `miou` NaN if either is).
The mask goes through the same Resize + CenterCrop as the pixels (nearest), so the score is measured inside the crop the model saw. The paper does not publish its
threshold (nor the VOC12 split; this uses the Segmentation `val` set unless `--image-set` says otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import InputError
from ..result import Result
from .base import Evaluator, Inputs, MetricInfo, register


def _threshold(text: str):
    if text in ("mean", "otsu"):
        return text
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--threshold {text!r}: use mean, otsu or a number") from None


@dataclass(frozen=True)
class CoarseSegOptions:
    thresholds: tuple[str, ...] = ("mean",)

    def __post_init__(self) -> None:
        for t in self.thresholds:
            _threshold(str(t))


@register
class CoarseSeg(Evaluator):
    name = "coarse-seg"
    description = "Coarse segmentation: fg/bg IoU of thresholded patch scores against VOC masks."
    taps = frozenset({"patch_scores"})
    needs = frozenset({"seg_labels"})
    metrics = {"coarse_seg.*": MetricInfo("percent", "higher")}
    Options = CoarseSegOptions

    def check(self, plan) -> None:
        if plan.voc is None:
            raise InputError("coarse-seg needs a PASCAL VOC devkit with SegmentationClass (--voc-root --year 2012)")
        missing = [i for i in plan.test.ids if not (plan.voc.root / "SegmentationClass" / f"{i}.png").is_file()]
        if missing:
            raise InputError(f"{plan.voc.root / 'SegmentationClass' / (missing[0] + '.png')}: mask of an image in "
                             f"the set does not exist ({len(missing)} missing)")
        self.voc = plan.voc
        t, arch = plan.model.transform, plan.model.arch
        self.resize, self.crop, self.grid, self.kind = t.resize, t.crop, arch.grid, t.kind

    def evaluate(self, inputs: Inputs) -> Result:
        from ..localization.coarse_seg import coarse_seg_counts, labels_to_crop, per_image_iou, seg_iou_metrics

        scores = inputs.test.get("patch_scores")
        thresholds = [(str(t).replace(".", "_").replace("-", "m"), _threshold(str(t))) for t in self.options.thresholds]
        counts = {name: [] for name, _ in thresholds}
        for i, s in zip(inputs.test.ids, scores, strict=True):
            labels = labels_to_crop(self.voc.segmentation(i), self.resize, self.crop, self.kind)
            for name, thr in thresholds:
                counts[name].append(coarse_seg_counts(s, labels, thr, self.grid))
        metrics, rows = {}, pd.DataFrame({"image_id": inputs.test.ids})
        for name, c in counts.items():
            c = np.asarray(c, dtype=np.int64).reshape(-1, 4)
            for key, m in seg_iou_metrics(c, seed=inputs.plan.seed).items():
                metrics[f"coarse_seg.{name}.{key}"] = m
            for j, col in enumerate(("fg_intersection", "fg_union", "bg_intersection", "bg_union")):
                rows[f"{name}.{col}"] = c[:, j]
            fg, bg = per_image_iou(c)  # a union of 0: NaN (no pixel of that side)
            rows[f"{name}.fg_iou"], rows[f"{name}.bg_iou"], rows[f"{name}.miou"] = fg, bg, (fg + bg) / 2
        info = {"thresholds": [n for n, _ in thresholds], "images": len(rows),
                "protocol": "patch scores upsampled to the model's crop, mask through the same Resize + CenterCrop"}
        return Result(self.name, metrics, rows=rows, info=info)
