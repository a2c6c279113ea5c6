"""Semantic-segmentation scores from an accumulated confusion matrix (mmseg IoUMetric's convention).

* Pixels whose label is the ignore index are excluded (prediction and label alike).
* Areas are summed over the whole dataset first; per-class IoU = intersection / union of those sums.
* mIoU = mean of per-class IoU over classes with union > 0, i.e. present in the ground truth or the
  prediction of some image (mmseg: `np.nanmean` of `intersect / union`, NaN where union = 0). A class
  the dataset never shows and the model never predicts does not count; one the model predicts but the
  ground truth never shows counts as IoU 0.
* aAcc (pixel accuracy) = correctly labelled / labelled pixels.

Per-image intersections and unions are kept so a percentile bootstrap over images (paired resampling of
whole images, the areas re-summed per resample) gives a 95% interval for mIoU (`lastvit_eval.stats`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..result import Metric, Result
from ..stats import bootstrap_metric


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = 255,
                     check: bool = True) -> torch.Tensor:
    """[C, C] int64 counts, rows = ground truth, columns = prediction, on the inputs' device.

    `check=False` skips the range checks (each one a device synchronisation) for callers whose labels were
    validated when decoded and whose predictions are class ids by construction; ignored pixels then go to
    one extra bin that is dropped, with no boolean indexing."""
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
    label = label.reshape(-1).long()
    pred = pred.reshape(-1).to(label.device).long()
    if not check:
        n = num_classes * num_classes
        idx = torch.where(label == ignore_index, n, label * num_classes + pred)
        return torch.bincount(idx, minlength=n + 1)[:n].view(num_classes, num_classes)
    keep = label != ignore_index
    label, pred = label[keep], pred[keep]
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= num_classes):
        raise ValueError(f"label values outside 0..{num_classes - 1} (ignore index {ignore_index})")
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"predicted class ids outside 0..{num_classes - 1}")
    return torch.bincount(label * num_classes + pred, minlength=num_classes * num_classes).view(num_classes, num_classes)


def _iou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


@dataclass
class SegScores:
    """Accumulates images; `summary()` gives mIoU, aAcc and per-class IoU (percent).

    The confusion matrix and the per-image areas stay on the inputs' device until they are read (one
    transfer for the whole dataset, not one synchronisation per image).
    """

    num_classes: int
    ignore_index: int = 255
    device: torch.device | str | None = None
    confusion: torch.Tensor | None = None
    _areas: list = field(default_factory=list, repr=False)  # per image [3, C]: intersection, label, prediction
    _host: np.ndarray | None = field(default=None, repr=False)  # _areas stacked on the host, once read

    def update(self, pred: torch.Tensor, label: torch.Tensor, check: bool = True) -> None:
        """One image: predicted class ids and ground truth of the same [H, W] shape (`check`: see
        `confusion_matrix`)."""
        if self.device is not None:
            pred, label = pred.to(self.device), label.to(self.device)
        cm = confusion_matrix(pred, label, self.num_classes, self.ignore_index, check)
        self.confusion = cm if self.confusion is None else self.confusion + cm
        self._areas.append(torch.stack([torch.diagonal(cm), cm.sum(1), cm.sum(0)]))
        self._host = None

    def _per_image(self) -> np.ndarray:
        """[n, 3, C] int64 on the host: intersection, label area, predicted area per image and class."""
        if self._host is None or len(self._host) != len(self._areas):
            self._host = (torch.stack(self._areas).cpu().numpy() if self._areas
                          else np.zeros((0, 3, self.num_classes), np.int64))
        return self._host

    @property
    def intersections(self) -> list[np.ndarray]:
        return list(self._per_image()[:, 0])

    @property
    def unions(self) -> list[np.ndarray]:
        a = self._per_image()
        return list(a[:, 1] + a[:, 2] - a[:, 0])

    @property
    def labelled(self) -> list[int]:
        """Per image: pixels not ignored."""
        return [int(v) for v in self._per_image()[:, 1].sum(1)]

    @property
    def correct(self) -> list[int]:
        return [int(v) for v in self._per_image()[:, 0].sum(1)]

    @property
    def n_images(self) -> int:
        return len(self._areas)

    def per_class_iou(self) -> np.ndarray:
        """Percent, NaN where the class has no union (absent from labels and predictions)."""
        cm = self._cm()
        inter = np.diag(cm).astype(np.float64)
        return 100.0 * _iou(inter, cm.sum(0) + cm.sum(1) - inter)

    def miou(self) -> float:
        iou = self.per_class_iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        cm = self._cm()
        return 100.0 * float(np.trace(cm)) / float(cm.sum()) if cm.sum() else float("nan")

    def per_image(self) -> dict[str, np.ndarray]:
        """Per image: pixel accuracy and mIoU over the classes present in its label or prediction."""
        self._need_images()
        inter, union = np.stack(self.intersections), np.stack(self.unions)
        iou = _iou(inter.astype(np.float64), union)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an image with only ignored pixels: NaN
            miou = 100.0 * np.nanmean(iou, axis=1)
        lab = np.asarray(self.labelled, dtype=np.float64)
        acc = np.where(lab > 0, 100.0 * np.asarray(self.correct) / np.maximum(lab, 1), np.nan)
        return {"pixel_accuracy": acc, "miou": miou, "labelled_pixels": np.asarray(self.labelled)}

    def miou_metric(self, n_resamples: int = 1000, seed: int = 0) -> Metric:
        """mIoU with a percentile-bootstrap 95% CI over images (areas re-summed per resample)."""
        self._need_images()
        inter, union = np.stack(self.intersections).astype(np.float64), np.stack(self.unions).astype(np.float64)

        def statistic(idx: np.ndarray) -> float:
            idx = idx.astype(np.int64)
            iou = _iou(inter[idx].sum(0), union[idx].sum(0))
            return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

        m = bootstrap_metric(statistic, np.arange(len(inter)), n_resamples=n_resamples, seed=seed, scale=100.0)
        m.unit = "percent"
        return m

    def pixel_accuracy_metric(self, n_resamples: int = 1000, seed: int = 0) -> Metric:
        self._need_images()
        correct, labelled = np.asarray(self.correct, np.float64), np.asarray(self.labelled, np.float64)

        def statistic(c: np.ndarray, n: np.ndarray, axis: int = -1) -> np.ndarray:
            return c.sum(axis) / n.sum(axis)

        m = bootstrap_metric(statistic, correct, labelled, n_resamples=n_resamples, seed=seed, scale=100.0,
                             vectorized=True)
        m.unit = "percent"
        return m

    def _need_images(self) -> None:
        if not self._areas:
            raise ValueError("no images scored yet")

    def _cm(self) -> np.ndarray:
        if self.confusion is None:
            return np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        return self.confusion.cpu().numpy()


def scores_result(
    scores: SegScores,
    class_names: Sequence[str],
    image_ids: Sequence[str],
    namespace: str = "zero_shot_seg",
    info: dict | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Result:
    """Metrics `<namespace>.miou` / `.pixel_acc` (bootstrap CIs over images), a per-class table
    (IoU and areas; NaN IoU = class absent from labels and predictions) and one row per image."""
    if len(class_names) != scores.num_classes or len(image_ids) != scores.n_images:
        raise ValueError(f"{len(class_names)} class names / {len(image_ids)} ids for "
                         f"{scores.num_classes} classes / {scores.n_images} scored images")
    cm = scores._cm()
    inter = np.diag(cm)
    per_class = pd.DataFrame({
        "class_id": np.arange(scores.num_classes), "class": list(class_names), "iou": scores.per_class_iou(),
        "intersection": inter, "union": cm.sum(0) + cm.sum(1) - inter, "gt_pixels": cm.sum(1), "pred_pixels": cm.sum(0),
    })
    rows = pd.DataFrame({"image_id": list(image_ids), **scores.per_image()})
    metrics = {
        f"{namespace}.miou": scores.miou_metric(n_resamples, seed),
        f"{namespace}.pixel_acc": scores.pixel_accuracy_metric(n_resamples, seed),
    }
    counted = int(np.isfinite(per_class["iou"]).sum())
    return Result(namespace, metrics, rows=rows, tables={"per_class": per_class},
                  info={"classes_averaged": counted, "num_classes": scores.num_classes, **(info or {})})
