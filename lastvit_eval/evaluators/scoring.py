"""Scoring shared by the classifiers (own head, linear probe): top-k hits and mean per-class recall."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..result import Metric
from ..stats import bootstrap_metric


@torch.no_grad()
def topk_hits(logits: torch.Tensor, labels: torch.Tensor, k: int = 5,
              chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prediction, top-1 hit and top-k hit per row; ties go to the lower class index.

    torch.topk does not order ties, so rows with a tie among their k+1 best scores (the only ties that
    can change the top k) are re-ranked by a stable sort; the others keep topk's answer.
    """
    k = min(k, logits.shape[1])
    keep = min(k + 1, logits.shape[1])
    preds, top1, topk = [], [], []
    for t0 in range(0, logits.shape[0], chunk):
        z, y = logits[t0 : t0 + chunk].float(), labels[t0 : t0 + chunk]
        values, order = torch.topk(z, keep, dim=1)
        tied = (values[:, 1:] == values[:, :-1]).any(dim=1)
        if bool(tied.any()):
            order[tied] = torch.sort(z[tied], dim=1, descending=True, stable=True).indices[:, :keep]
        hit = order[:, :k] == y[:, None]
        preds.append(order[:, 0])
        top1.append(hit[:, 0])
        topk.append(hit.any(dim=1))
    return torch.cat(preds).numpy(), torch.cat(top1).numpy(), torch.cat(topk).numpy()


def mean_per_class_recall(labels: np.ndarray, correct: np.ndarray, axis: int = -1) -> float | np.ndarray:
    """Unweighted mean over the classes present in `labels` of the fraction predicted correctly.

    Vectorized for the bootstrap: 2-D (resamples x samples) inputs give one value per row, each over
    the classes present in that row.
    """
    labels, correct = np.asarray(labels), np.asarray(correct, dtype=float)
    if labels.ndim == 1:
        return float(mean_per_class_recall(labels[None], correct[None], axis)[0])
    labels, correct = np.moveaxis(labels, axis, -1), np.moveaxis(correct, axis, -1)
    rows = labels.shape[0]
    if labels.dtype.kind in "iu" and labels.min() >= 0 and rows * (int(labels.max()) + 1) <= 2**25:
        inverse, c = labels, int(labels.max()) + 1  # class ids index directly; absent classes are NaN below
    else:
        classes, inverse = np.unique(labels, return_inverse=True)
        inverse, c = inverse.reshape(labels.shape), classes.size
    flat = (inverse + c * np.arange(rows)[:, None]).ravel()
    hits = np.bincount(flat, weights=correct.ravel(), minlength=rows * c).reshape(rows, c)
    counts = np.bincount(flat, minlength=rows * c).reshape(rows, c)
    recall = np.divide(hits, counts, out=np.full(hits.shape, np.nan), where=counts > 0)
    return np.nanmean(recall, axis=1)


def mean_per_class_recall_metric(labels: np.ndarray, correct: np.ndarray, seed: int = 0) -> Metric:
    """Percentage with a bootstrap CI over test samples (no closed form for a mean of recalls)."""
    return bootstrap_metric(mean_per_class_recall, np.asarray(labels), np.asarray(correct, dtype=bool),
                            seed=seed, scale=100.0, vectorized=True)


def per_class_table(labels: np.ndarray, correct: np.ndarray) -> pd.DataFrame:
    """One row per class present in the test labels: class, n, top1 (percent)."""
    df = pd.DataFrame({"class": np.asarray(labels), "hit": np.asarray(correct, dtype=float)})
    g = df.groupby("class", sort=True)["hit"].agg(["size", "mean"]).reset_index()
    return pd.DataFrame({"class": g["class"], "n": g["size"].astype(int), "top1": 100.0 * g["mean"]})
