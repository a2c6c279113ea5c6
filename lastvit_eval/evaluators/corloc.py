"""CorLoc (object discovery): one box per image from the LAST vote map; a hit is IoU >= 0.5 with any object.

Protocol (LOST, valeoai/LOST `main_corloc_evaluation.py`): VOC07 / VOC12 trainval, every object counts
(difficult and truncated included), IoU on pixel edges without +1, hit when IoU >= 0.5 with any ground
truth box; 95% Wilson interval. Method `last-votes` (the paper's): votes per patch (how many channels
chose it) -> foreground where votes exceed mean + `--vote-std` standard deviations (or an absolute
`--vote-threshold`) -> the 4-connected component holding the most votes -> its box, mapped back to
original pixels through the inverse of the model's Resize + CenterCrop.

Where this differs from LOST: LOST feeds the whole image at its own resolution (padded to a multiple of
the patch); here the image goes through the model's evaluation transform, so an object outside the
center crop cannot be found. `lost` and `dino-seg` need the last block's keys and CLS attention, which
the forward does not emit yet; they are refused by `check`, not approximated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..result import Result
from .base import Evaluator, Inputs, MetricInfo, register

PROTOCOL_NOTE = ("image through the model's Resize + CenterCrop (LOST: full image, padded); every VOC object "
                 "counts; IoU >= 0.5 with any object, pixel edges, no +1")


@dataclass(frozen=True)
class CorLocOptions:
    method: str = "last-votes"
    vote_std: float = 1.0
    vote_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.method not in ("last-votes", "lost", "dino-seg"):
            raise InputError(f"--method {self.method!r}: use last-votes, lost or dino-seg")


@register
class CorLoc(Evaluator):
    name = "corloc"
    description = "Object discovery: CorLoc of one box per image (LAST vote map), on a VOC devkit."
    taps = frozenset({"votes"})
    needs = frozenset({"boxes"})
    metrics = {"corloc.hit": MetricInfo("percent", "higher"), "corloc.mean_iou": MetricInfo("ratio", "higher")}
    Options = CorLocOptions

    def check(self, plan) -> None:
        from ..data.decode import read_size

        if plan.voc is None:
            raise InputError("corloc needs a PASCAL VOC devkit (--voc-root, --year, --image-set)")
        if self.options.method != "last-votes":
            raise InputError(f"corloc --method {self.options.method}: needs the last block's keys / CLS attention, "
                             "which the forward does not emit yet; use --method last-votes")
        not_last = [p.name for p in plan.poolings if p.kind != "last"]
        if not_last:
            raise InputError(f"corloc --method last-votes: votes exist for LAST poolings only, got {', '.join(not_last)}")
        self.gt = {i: plan.voc.annotation(i).boxes() for i in plan.test.ids}
        self.sizes = {i: read_size(p) for i, p in zip(plan.test.ids, plan.test.paths, strict=True)}
        t, arch = plan.model.transform, plan.model.arch
        self.resize, self.crop, self.patch, self.grid = t.resize, t.crop, arch.patch_size, arch.grid

    def evaluate(self, inputs: Inputs) -> Result:
        from ..localization.boxes_from_maps import patch_box_to_original, vote_map_box
        from ..localization.corloc import corloc

        o = self.options
        votes = inputs.test.get("votes")
        boxes = []
        for i, v in zip(inputs.test.ids, votes, strict=True):
            found = vote_map_box(v, self.grid, n_std=o.vote_std, threshold=o.vote_threshold)
            boxes.append(None if found is None else
                         patch_box_to_original(found.box, self.patch, self.sizes[i], self.resize, self.crop))
        res = corloc(boxes, [self.gt[i] for i in inputs.test.ids])
        rows = res.rows(inputs.test.ids, boxes, column="hit")[["image_id", "x0", "y0", "x1", "y1", "iou", "hit",
                                                              "status"]]
        counted = res.counted & res.has_box
        from ..result import Metric

        metrics = {"corloc.hit": res.metric}
        if counted.any():
            metrics["corloc.mean_iou"] = Metric(float(np.nanmean(res.best_iou[counted])), n=int(counted.sum()))
        info = {"method": o.method, "vote_std": o.vote_std, "vote_threshold": o.vote_threshold,
                "images": len(boxes), "no_box": res.n_no_box, "no_ground_truth": res.n_no_gt,
                "protocol": PROTOCOL_NOTE}
        return Result(self.name, metrics, rows=rows, info=info)
