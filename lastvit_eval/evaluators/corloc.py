"""CorLoc (object discovery): one box per image; a hit is IoU >= 0.5 with any ground-truth object.

Protocol (LOST, valeoai/LOST `main_lost.py`, `datasets.py`, `object_discovery.py`; see `localization/corloc.py`):
VOC07 / VOC12 trainval (a devkit, `--voc-root`) or COCO20k (`--coco-root`, `--coco-annotations`,
`--image-list`); VOC: every object counts (difficult and truncated included); COCO: every non-crowd
annotation, boxes rounded to integers; IoU on pixel edges without +1; hit when IoU >= 0.5 with any box;
95% Wilson interval. Methods:

* `last-votes` (the paper's): LAST votes per patch -> foreground above mean + `--vote-std` std (or
  `--vote-threshold`) -> the 4-connected component holding the most votes -> its box.
* `lost`: LOST on the last block's patch keys (`localization/lost.py`, `--k-patches`, default 100).
* `dino-seg`: LOST's DINO-seg baseline on the CLS attention of head `--dinoseg-head` (default 4, as
  `main_lost.py`), 60% of the attention mass, LOST's component rule (`localization/dino_seg.py`).

Resolution (`--resolution`): `full` is LOST's (whole image, padded to a multiple of the patch, position
embeddings resampled, batch 1; `engine/full_res.py`), the default for `lost` and `dino-seg`, whose
published numbers use it; `model` is the model's Resize + CenterCrop, the default for `last-votes` (its
earlier results and stored features stay comparable): pass `--resolution full` to compare LAST with LOST
on one protocol. Streaming: `reduce` turns each image's tap into its box ([4], NaN: no box) as images are
forwarded (extraction keeps the boxes only: full-resolution keys of a whole split, ~3 GB for VOC07 with
ViT-S/16, are never held at once); `evaluate` takes boxes or taps. Boxes go back to original pixels:
full -> scaled by the patch, x1/y1 clipped to the image (`lost`, `last-votes`) or not clipped (`dino-seg`,
as LOST's `dino_seg`); model -> through the inverse of the crop, clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..result import Metric, Result
from .base import Evaluator, Inputs, MetricInfo, register

METHODS = ("last-votes", "lost", "dino-seg")
METHOD_TAPS = {"last-votes": frozenset({"votes"}), "lost": frozenset({"keys"}), "dino-seg": frozenset({"cls_attn"})}
DEFAULT_RESOLUTION = {"last-votes": "model", "lost": "full", "dino-seg": "full"}


@dataclass(frozen=True)
class CorLocOptions:
    method: str = "last-votes"
    vote_std: float = 1.0
    vote_threshold: float | None = None
    resolution: str | None = None  # full | model; None: the method's default (DEFAULT_RESOLUTION)
    k_patches: int = 100
    dinoseg_head: int = 4

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"--method {self.method!r}: use last-votes, lost or dino-seg")
        if self.resolution not in (None, "full", "model"):
            raise InputError(f"--resolution {self.resolution!r}: use full (LOST's: whole image, padded) or model")
        if self.k_patches < 1:
            raise InputError(f"--k-patches {self.k_patches}: must be at least 1")
        if self.dinoseg_head < 0:
            raise InputError(f"--dinoseg-head {self.dinoseg_head}: must be a head index (0 ...)")


@register
class CorLoc(Evaluator):
    name = "corloc"
    description = "Object discovery: CorLoc of one box per image (LAST votes, LOST or DINO-seg), VOC or COCO."
    taps = frozenset({"votes", "keys", "cls_attn"})  # what it may read; an instance declares its method's taps
    needs = frozenset({"boxes"})
    metrics = {"corloc.hit": MetricInfo("percent", "higher"), "corloc.mean_iou": MetricInfo("ratio", "higher")}
    Options = CorLocOptions

    def __init__(self, options=None) -> None:
        super().__init__(options)
        o = self.options
        self.taps = METHOD_TAPS[o.method]
        self.input_resolution = o.resolution or DEFAULT_RESOLUTION[o.method]  # read by plan._resolution

    def check(self, plan) -> None:
        from ..data.decode import read_size

        o = self.options
        if plan.voc is None and plan.coco is None:
            raise InputError("corloc needs a PASCAL VOC devkit (--voc-root, --year, --image-set) or COCO "
                             "(--coco-root, --coco-annotations, --image-list)")
        if o.method == "last-votes":
            not_last = [p.name for p in plan.poolings if p.kind != "last"]
            if not_last:
                raise InputError(f"corloc --method last-votes: votes exist for LAST poolings only, got "
                                 f"{', '.join(not_last)}")
        # registers (DINOv2-reg, timm reg_tokens) are fine: the taps drop every prefix token from the keys and
        # the CLS attention's columns (engine/taps.py), and DINO-seg renormalises the attention over the patches
        if o.method in ("lost", "dino-seg") and not plan.model.has_class_token:
            raise InputError(f"corloc --method {o.method}: {plan.model.name} has no class token; LOST and DINO-seg "
                             "are defined for a ViT with one")
        if o.method == "dino-seg" and o.dinoseg_head >= plan.model.arch.heads:
            raise InputError(f"--dinoseg-head {o.dinoseg_head}: {plan.model.name} has {plan.model.arch.heads} heads")
        if plan.voc is not None:
            self.gt = {i: plan.voc.annotation(i).boxes() for i in plan.test.ids}
        else:
            self.gt = {i: plan.coco[i].boxes for i in plan.test.ids}
        self.sizes = {i: read_size(p) for i, p in zip(plan.test.ids, plan.test.paths, strict=True)}
        if plan.coco is not None:
            for i, path in zip(plan.test.ids, plan.test.paths, strict=True):
                if tuple(plan.coco[i].size) != tuple(self.sizes[i]):
                    raise InputError(f"{path}: image is {self.sizes[i][0]}x"
                                     f"{self.sizes[i][1]} but {plan.request.coco_annotations} says "
                                     f"{plan.coco[i].size[0]}x{plan.coco[i].size[1]}")
        t, arch = plan.model.transform, plan.model.arch
        self.full = getattr(t, "kind", "resize-crop") == "full-padded"
        self.resize, self.crop, self.patch, self.grid = t.resize, t.crop, arch.patch_size, arch.grid
        self.kind = t.kind

    def _grid(self, image_id: str) -> tuple[int, int]:
        from ..localization.boxes_from_maps import padded_grid

        return padded_grid(self.sizes[image_id], self.patch) if self.full else self.grid

    def box(self, image_id: str, value: np.ndarray):
        """One image's box in original pixels (None: no box) from its tap value."""
        from ..localization.boxes_from_maps import patch_box_to_full_res, patch_box_to_original, vote_map_box
        from ..localization.dino_seg import dino_seg
        from ..localization.lost import lost

        o, grid = self.options, self._grid(image_id)
        value = np.asarray(value)
        patches = value.shape[0] if o.method == "lost" else value.shape[-1]
        if patches != grid[0] * grid[1]:
            raise InputError(f"{image_id}: {patches} patch features for a {grid[0]}x{grid[1]} grid (image "
                             f"{self.sizes[image_id][0]}x{self.sizes[image_id][1]}, patch {self.patch})")
        if o.method == "last-votes":
            found = vote_map_box(value, grid, n_std=o.vote_std, threshold=o.vote_threshold)
            patch_box = None if found is None else found.box
        elif o.method == "lost":
            patch_box = lost(value.reshape(grid[0] * grid[1], -1), grid, o.k_patches).box
        else:
            patch_box = dino_seg(value, grid, head=o.dinoseg_head, component="lost")[0]
        if patch_box is None:
            return None
        if self.full:
            return patch_box_to_full_res(patch_box, self.patch, self.sizes[image_id], clip=o.method != "dino-seg")
        return patch_box_to_original(patch_box, self.patch, self.sizes[image_id], self.resize, self.crop, self.kind)

    def reduce(self, arrays: dict[str, np.ndarray], ids: list[str]) -> dict[str, np.ndarray]:
        """Each image's tap -> its box in original pixels, float64 [n, 4] (a row of NaN: no box)."""
        values = arrays.get(next(iter(self.taps)))
        if values is None:
            raise InputError(f"no {next(iter(self.taps))!r} features for this run (have: "
                             f"{', '.join(sorted(arrays)) or 'none'})")
        out = np.full((len(ids), 4), np.nan)
        for j, (image_id, v) in enumerate(zip(ids, values, strict=True)):
            b = self.box(image_id, v)
            if b is not None:
                out[j] = b
        return {"box": out}

    def evaluate(self, inputs: Inputs) -> Result:
        from ..localization.corloc import corloc

        o = self.options
        arrays = inputs.test.arrays
        found = arrays["box"] if "box" in arrays else self.reduce(arrays, inputs.test.ids)["box"]
        boxes = [None if np.isnan(b).any() else tuple(float(x) for x in b) for b in found]
        res = corloc(boxes, [self.gt[i] for i in inputs.test.ids])
        rows = res.rows(inputs.test.ids, boxes, column="hit")[["image_id", "x0", "y0", "x1", "y1", "iou", "hit",
                                                              "status"]]
        counted = res.counted & res.has_box
        metrics = {"corloc.hit": res.metric}
        if counted.any():
            metrics["corloc.mean_iou"] = Metric(float(np.nanmean(res.best_iou[counted])), n=int(counted.sum()))
        info = {"method": o.method, "resolution": self.input_resolution, "images": len(boxes),
                "no_box": res.n_no_box, "no_ground_truth": res.n_no_gt, "protocol": self.protocol()}
        if o.method == "last-votes":
            info.update(vote_std=o.vote_std, vote_threshold=o.vote_threshold)
        elif o.method == "lost":
            info.update(k_patches=o.k_patches, pooling_used=False)
        else:
            info.update(dinoseg_head=o.dinoseg_head, mass=0.6, component="lost", pooling_used=False)
        return Result(self.name, metrics, rows=rows, info=info)

    def protocol(self) -> str:
        res = ("whole image, zero-padded (after normalisation) to a multiple of the patch, batch 1, position "
               "embeddings resampled by timm (LOST's)" if self.full else
               "image through the model's Resize + CenterCrop (LOST: full image, padded)")
        return (f"{res}; VOC: every object counts (difficult, truncated); COCO: non-crowd boxes, rounded; IoU >= 0.5 "
                "with any object, pixel edges, no +1")
