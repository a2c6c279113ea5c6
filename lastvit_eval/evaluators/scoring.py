"""Scoring shared by the classifiers (own head, linear probe): top-k hits and mean per-class recall."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..result import Metric
from ..stats import bootstrap_metric


@torch.no_grad()
def topk_hits(logits: torch.Tensor, labels: torch.Tensor, chunk: int = 4096) -> tuple[np.ndarray, ...]:
    """Prediction, top-1 hit and top-5 hit per row; ties go to the lower class index (stable sort)."""
    preds, top1, top5 = [], [], []
    for t0 in range(0, logits.shape[0], chunk):
        z, y = logits[t0 : t0 + chunk].float(), labels[t0 : t0 + chunk]
        order = torch.sort(z, dim=1, descending=True, stable=True).indices[:, : min(5, z.shape[1])]
        hit = order == y[:, None]
        preds.append(order[:, 0])
        top1.append(hit[:, 0])
        top5.append(hit.any(dim=1))
    return torch.cat(preds).numpy(), torch.cat(top1).numpy(), torch.cat(top5).numpy()


def mean_per_class_recall(labels: np.ndarray, correct: np.ndarray) -> float:
    """Unweighted mean over the classes present in `labels` of the fraction predicted correctly."""
    labels = np.asarray(labels)
    classes, inverse = np.unique(labels, return_inverse=True)
    hits = np.bincount(inverse, weights=np.asarray(correct, dtype=float), minlength=classes.size)
    return float(np.mean(hits / np.bincount(inverse, minlength=classes.size)))


def mean_per_class_recall_metric(labels: np.ndarray, correct: np.ndarray, seed: int = 0) -> Metric:
    """Percentage with a bootstrap CI over test samples (no closed form for a mean of recalls)."""
    return bootstrap_metric(
        mean_per_class_recall, np.asarray(labels), np.asarray(correct, dtype=bool), seed=seed, scale=100.0
    )


def per_class_table(labels: np.ndarray, correct: np.ndarray) -> pd.DataFrame:
    """One row per class present in the test labels: class, n, top1 (percent)."""
    df = pd.DataFrame({"class": np.asarray(labels), "hit": np.asarray(correct, dtype=float)})
    g = df.groupby("class", sort=True)["hit"].agg(["size", "mean"]).reset_index()
    return pd.DataFrame({"class": g["class"], "n": g["size"].astype(int), "top1": 100.0 * g["mean"]})
