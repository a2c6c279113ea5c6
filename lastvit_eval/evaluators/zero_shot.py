"""Zero-shot classification: cosine of each image embedding with a text classifier's class vectors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..result import Result
from ..stats import proportion
from .base import Evaluator, Inputs, MetricInfo, register
from .scoring import mean_per_class_recall_metric, topk_hits


def evaluate(
    image_embeddings: np.ndarray,
    labels: np.ndarray,
    classifier: np.ndarray,
    class_names: list[str],
    image_ids: list[str],
    top_k: int = 5,
) -> Result:
    """image_embeddings [N, D] (projected), classifier [D, C] (unit columns, open_clip's layout)."""
    emb = np.asarray(image_embeddings, dtype=np.float32)
    w = np.asarray(classifier, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if emb.ndim != 2 or w.ndim != 2:
        raise InputError(f"zero-shot: embeddings {emb.shape} and classifier {w.shape} must be 2-D")
    n, d = emb.shape
    if w.shape[0] != d:
        raise InputError(f"zero-shot: classifier is {w.shape[0]}x{w.shape[1]}, expected {d} x classes "
                         "(embedding width first)")
    c = w.shape[1]
    if len(class_names) != c:
        raise InputError(f"zero-shot: {len(class_names)} class names for a classifier with {c} classes")
    if labels.shape != (n,) or len(image_ids) != n:
        raise InputError(f"zero-shot: {n} embeddings, {labels.shape[0]} labels, {len(image_ids)} image ids")
    if n == 0:
        raise InputError("zero-shot: no images to evaluate")
    if labels.min() < 0 or labels.max() >= c:
        bad = labels[(labels < 0) | (labels >= c)][0]
        raise InputError(f"zero-shot: label {bad} is outside the {c} classes of the classifier")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    logits = (emb / np.maximum(norms, 1e-12)) @ w
    k = min(top_k, c)
    pred, top1, topk = topk_hits(torch.from_numpy(logits), torch.from_numpy(labels), k)
    rows_i = np.arange(n)
    names = np.asarray(class_names, dtype=object)
    rows = pd.DataFrame({
        "image_id": list(image_ids),
        "label": labels,
        "class": names[labels],
        "pred": pred,
        "pred_class": names[pred],
        "score": logits[rows_i, pred],
        "label_score": logits[rows_i, labels],
        "top1": top1,
        f"top{k}": topk,
    })
    metrics = {
        "zero_shot.top1": proportion(top1),
        f"zero_shot.top{k}": proportion(topk),
        "zero_shot.mean_per_class_recall": mean_per_class_recall_metric(labels, top1),
    }
    per = rows.groupby("label", sort=True).agg(cls=("class", "first"), n=("top1", "size"), top1=("top1", "mean"))
    per["top1"] *= 100.0
    return Result(
        evaluator="zero-shot",
        metrics=metrics,
        rows=rows,
        tables={"per_class": per.rename(columns={"cls": "class"}).reset_index()},
        info={"images": n, "classes": c, "classes_present": int(np.unique(labels).size), "top_k": k},
    )


@register
class ZeroShot(Evaluator):
    """CLIP zero-shot: projected pooled token vs the text classifier the plan builds (and stores)."""

    name = "zero-shot"
    description = "Zero-shot top-1/top-5 and mean per-class recall of a CLIP checkpoint."
    taps = frozenset({"embedding"})
    needs = frozenset({"labels", "text"})
    metrics = {"zero_shot.*": MetricInfo("percent", "higher")}

    def evaluate(self, inputs: Inputs) -> Result:
        text = inputs.plan.text
        labels = text.class_map.indices[inputs.test.labels]
        result = evaluate(inputs.test.get("embedding"), labels, text.weights, list(text.prompts.classnames),
                          inputs.test.ids)
        result.info["text_classifier"] = text.info
        result.info["class_map"] = text.class_map.describe(inputs.classes)
        return result
