"""Point-in-box: is the patch most similar to the pooled token inside the object?"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import InputError
from ..result import Result
from ..stats import bootstrap_metric, proportion
from .base import Evaluator, Inputs, MetricInfo, register


def evaluate(
    scores: np.ndarray,
    targets: np.ndarray,
    image_ids: list[str],
    grid: tuple[int, int],
    classes: list[str] | None = None,
    labels: np.ndarray | None = None,
    top_k: int = 5,
) -> Result:
    """scores [N, P] (cosine of each patch with the pooled token), targets [N, P] (patch counts as inside).

    top1: the arg-max patch is a target; top5: any of the `top_k` best patches is.
    """
    scores = np.asarray(scores, dtype=np.float32)
    targets = np.asarray(targets, dtype=bool)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise InputError(f"patch-hit: scores {scores.shape} and targets {targets.shape} must both be [images, patches]")
    if scores.shape[1] != grid[0] * grid[1]:
        raise InputError(f"patch-hit: {scores.shape[1]} patches do not fill a {grid[0]}x{grid[1]} grid")
    n = scores.shape[0]
    if n == 0:
        raise InputError("patch-hit: no images left to evaluate")
    k = min(top_k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = order[:, 0]
    rows_i = np.arange(n)
    top1 = targets[rows_i, top]
    topk = targets[rows_i[:, None], order].any(axis=1)
    # foreground/background separation: mean score of object patches minus background patches
    n_fg, n_bg = targets.sum(axis=1), (~targets).sum(axis=1)
    both = (n_fg > 0) & (n_bg > 0)
    fg_mean = np.where(targets, scores, 0).sum(axis=1) / np.maximum(n_fg, 1)
    bg_mean = np.where(~targets, scores, 0).sum(axis=1) / np.maximum(n_bg, 1)
    gap = (fg_mean - bg_mean)[both]
    rows = pd.DataFrame(
        {
            "image_id": list(image_ids),
            "class": list(classes) if classes is not None else [None] * n,
            "label": np.asarray(labels) if labels is not None else np.full(n, -1),
            "top_patch": top,
            "top_row": top // grid[1],
            "top_col": top % grid[1],
            "score": scores[rows_i, top],
            "target_patches": n_fg,
            "fg_bg_gap": np.where(both, fg_mean - bg_mean, np.nan),
            "fg_above_bg": both & (fg_mean > bg_mean),
            "top1": top1,
            f"top{k}": topk,
        }
    )
    metrics = {"patch_hit.top1": proportion(top1), f"patch_hit.top{k}": proportion(topk)}
    if gap.size:
        metrics["patch_hit.fg_bg_gap"] = bootstrap_metric(np.mean, gap)
        metrics["patch_hit.fg_above_bg"] = proportion(gap > 0)
    tables = {}
    if classes is not None:
        per = rows.groupby("class", sort=True).agg(n=("top1", "size"), top1=("top1", "mean"), topk=("top" + str(k), "mean"))
        per[["top1", "topk"]] *= 100.0
        tables["per_class"] = per.rename(columns={"topk": f"top{k}"}).reset_index()
    # chance level: the hit ratio of a patch drawn uniformly at random, for context
    chance = float(targets.mean(axis=1).mean() * 100.0)
    return Result(
        evaluator="patch-hit",
        metrics=metrics,
        rows=rows,
        tables=tables,
        info={"images": n, "top_k": k, "chance_top1": chance},
    )


@dataclass(frozen=True)
class PatchHitOptions:
    hit_rule: str | None = None  # None: any with boxes (the paper), majority with masks
    fg_fraction: float = 0.5
    single_object: bool = True
    max_box_area: float = 0.25

    def __post_init__(self) -> None:
        if self.hit_rule not in (None, "any", "center", "majority"):
            raise InputError(f"--hit-rule {self.hit_rule!r}: use any, center or majority")
        if not 0 < self.max_box_area <= 1:
            raise InputError(f"--max-box-area {self.max_box_area}: must be in (0, 1]")
        if not 0 <= self.fg_fraction < 1:
            raise InputError(f"--fg-fraction {self.fg_fraction}: must be in [0, 1)")


@register
class PatchHit(Evaluator):
    """Point-in-box: is the patch most similar to the pooled token inside the object?

    `check` reads the boxes (or masks) and image headers, applies the paper's filter and maps every box
    onto the patch grid through the model's own Resize + CenterCrop; `select` hands the kept images to
    the forward pass, so a patch-hit run forwards only those.
    """

    name = "patch-hit"
    description = "Point-in-box hit ratio of the top-scoring patch (the paper's PiB)."
    taps = frozenset({"patch_scores"})
    needs = frozenset({"boxes"})
    metrics = {
        "patch_hit.top*": MetricInfo("percent", "higher"),
        "patch_hit.fg_above_bg": MetricInfo("percent", "higher"),
        "patch_hit.fg_bg_gap": MetricInfo("cosine", "higher"),
    }
    Options = PatchHitOptions

    def check(self, plan) -> None:
        from ..data.filters import FilterSpec
        from ..data.pib import load_pib_data, targets_for

        if plan.model is None or plan.root is None:
            raise InputError("patch-hit needs images with boxes and a checkpoint (--imagenet-root), "
                             "not feature files")
        o = self.options
        masks = plan.request.masks
        self.rule = o.hit_rule or ("majority" if masks else "any")
        filt = FilterSpec(single_object=o.single_object, max_box_area=None if o.max_box_area >= 1 else o.max_box_area)
        self.filter = filt
        data = load_pib_data(plan.root, plan.request.boxes, filt, plan.engine.on_bad_image, split=plan.split,
                             masks=masks, **plan.annotation_policy())
        t, arch = plan.model.transform, plan.model.arch
        targets = targets_for(data, t.resize, t.crop, arch.patch_size, self.rule, o.fg_fraction, kind=t.kind)
        inside = targets.any(axis=1)
        outside = [r.image_id for r, ok in zip(data.records, inside, strict=True) if not ok]
        if outside:
            data.dropped["object outside the crop" if masks else "box outside the crop"] = outside
        keep = np.flatnonzero(inside)
        if keep.size == 0:
            raise InputError(f"{plan.root}: no image has a box inside the {t.crop}x{t.crop} model input ({t.kind})")
        self.data, self.targets, self.grid = data, targets, arch.grid
        self.row_of = {data.records[i].image_id: int(i) for i in keep}

    def select(self, plan) -> list[str]:
        return list(self.row_of)

    def evaluate(self, inputs: Inputs) -> Result:
        from ..data.filters import summarize

        data = self.data
        rows = np.array([self.row_of[i] for i in inputs.test.ids], dtype=np.int64)
        if inputs.skipped:
            data.dropped["unreadable image"] = sorted(set(data.dropped.get("unreadable image", []))
                                                      | set(inputs.skipped))
        if rows.size == 0:
            raise InputError(f"{inputs.plan.root}: every selected image failed to decode")
        result = evaluate(inputs.test.get("patch_scores"), self.targets[rows], [data.records[i].image_id for i in rows],
                          self.grid, classes=[data.class_of(i) for i in rows],
                          labels=np.asarray([data.labels[i] for i in rows]))
        result.info.update({"found": data.report["found"], "kept_after_filter": data.report["kept"],
                            "evaluated": int(len(rows)), "dropped": summarize(data.dropped), "hit_rule": self.rule,
                            "filter": self.filter.to_dict(), "boxes": data.boxes_source,
                            "fg_fraction": self.options.fg_fraction})
        if data.dropped:
            result.tables["dropped"] = pd.DataFrame(
                [(reason, i) for reason, ids in data.dropped.items() for i in ids], columns=["reason", "image_id"])
        return result
