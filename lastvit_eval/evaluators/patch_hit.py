"""Point-in-box: is the patch most similar to the pooled token inside the object?"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError
from ..result import Result
from ..stats import proportion
from . import register


@register("patch-hit", taps=("patch_scores",), description="Point-in-box hit ratio of the top-scoring patch.")
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
    rows = pd.DataFrame(
        {
            "image_id": list(image_ids),
            "class": list(classes) if classes is not None else [None] * n,
            "label": np.asarray(labels) if labels is not None else np.full(n, -1),
            "top_patch": top,
            "top_row": top // grid[1],
            "top_col": top % grid[1],
            "score": scores[rows_i, top],
            "target_patches": targets.sum(axis=1),
            "top1": top1,
            f"top{k}": topk,
        }
    )
    metrics = {"patch_hit.top1": proportion(top1), f"patch_hit.top{k}": proportion(topk)}
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
