"""Classification with the checkpoint's own head, scored from its logits (no re-run of the model)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..errors import InputError
from ..result import Result
from ..stats import proportion
from .base import Evaluator, Inputs, MetricInfo, register
from .checks import ArrayLike, as_features, as_ids, as_labels, labels_in_range
from .scoring import mean_per_class_recall_metric, per_class_table, topk_hits


def evaluate(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    test_ids: Sequence | None = None,
    num_classes: int | None = None,
    seed: int = 0,
) -> Result:
    """Top-1, top-5 (Wilson CIs) and mean per-class recall (bootstrap CI) plus a per-class table."""
    z = as_features(logits, "logits")
    y = as_labels(labels, "labels", z.shape[0])
    if num_classes is not None and num_classes != z.shape[1]:
        raise InputError(f"logits: {z.shape[1]} columns but num_classes={num_classes}")
    labels_in_range(y, z.shape[1], "labels")
    ids = as_ids(test_ids, z.shape[0])

    pred, top1, top5 = topk_hits(z, y)
    yn = y.numpy()
    rows = pd.DataFrame({"image_id": ids, "label": yn, "pred": pred, "top1": top1, "top5": top5})
    metrics = {
        "classify.top1": proportion(top1),
        "classify.top5": proportion(top5),
        "classify.mean_per_class_recall": mean_per_class_recall_metric(yn, top1, seed=seed),
    }
    info = {"n": int(z.shape[0]), "num_classes": int(z.shape[1]), "n_classes_in_labels": int(len(set(yn)))}
    return Result("classify", metrics, rows=rows, tables={"per_class": per_class_table(yn, top1)}, info=info)


@register
class Classify(Evaluator):
    """The checkpoint's own head on the pooled token; dataset classes are mapped to head outputs by the plan."""

    name = "classify"
    description = "Top-1/top-5 and per-class recall of the checkpoint's own head."
    taps = frozenset({"logits"})
    needs = frozenset({"labels", "head"})
    metrics = {"classify.*": MetricInfo("percent", "higher")}

    def evaluate(self, inputs: Inputs) -> Result:
        cmap = inputs.plan.class_map
        head = cmap.indices[inputs.test.labels]
        result = evaluate(inputs.test.get("logits"), head, test_ids=inputs.test.ids, seed=inputs.plan.seed)
        result.info["class_map"] = cmap.describe(inputs.classes)
        return result
