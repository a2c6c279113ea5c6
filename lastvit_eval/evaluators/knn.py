"""Weighted k-NN classification on frozen features (the DINO protocol).

Train and test features are L2-normalized, similarity is cosine, the top-k training neighbours vote for
their label with weight exp(sim / T). Every k comes from ONE top-max(k) search: the neighbours of a
smaller k are a prefix of the sorted list. The search is chunked over test rows and over the training
bank with a running top-k merge, so memory stays bounded for a 1.28M x 768 bank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..result import Result
from ..stats import proportion
from .base import Evaluator, Inputs, MetricInfo, register
from .checks import (
    ArrayLike,
    as_features,
    as_ids,
    as_labels,
    empty_classes,
    labels_in_range,
    resolve_device,
    resolve_num_classes,
    same_width,
)

DEFAULT_KS = (10, 20, 100, 200)
# Defaults keep one step near 250 MB in fp32 at D=768: a 32768 x 768 bank chunk (~100 MB) and a
# 1024 x 32768 similarity block (~130 MB).
DEFAULT_TRAIN_CHUNK = 32768
DEFAULT_TEST_CHUNK = 1024


def evaluate(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
    *,
    test_ids: Sequence | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    num_classes: int | None = None,
    device: str | torch.device | None = None,
    train_chunk: int = DEFAULT_TRAIN_CHUNK,
    test_chunk: int = DEFAULT_TEST_CHUNK,
) -> Result:
    """k-NN top-1/top-5 for every k in `ks` with Wilson CIs; the class count comes from the train side."""
    train = as_features(train_feats, "train_feats")
    test = as_features(test_feats, "test_feats")
    same_width(train, test, "train_feats", "test_feats")
    ytr = as_labels(train_labels, "train_labels", train.shape[0])
    yte = as_labels(test_labels, "test_labels", test.shape[0])
    n_cls = resolve_num_classes(ytr, num_classes)
    labels_in_range(yte, n_cls, "test_labels")
    ids = as_ids(test_ids, test.shape[0])
    ks = _check_ks(ks)
    if not temperature > 0:
        raise InputError(f"temperature must be positive, got {temperature}")
    if train_chunk < 1 or test_chunk < 1:
        raise InputError(f"chunk sizes must be positive, got {train_chunk=}, {test_chunk=}")
    dev = resolve_device(device)

    n_train = train.shape[0]
    eff = {k: min(k, n_train) for k in ks}
    kmax = max(eff.values())
    sims, idx = topk_neighbours(train, test, kmax, device=dev, train_chunk=train_chunk, test_chunk=test_chunk)
    nb_labels = ytr[idx]  # [N_test, kmax]

    rows = pd.DataFrame({"image_id": ids, "label": yte.numpy()})
    metrics = {}
    for k in ks:
        kk = eff[k]
        pred, top1, top5 = vote(sims[:, :kk], nb_labels[:, :kk], yte, n_cls, temperature, test_chunk)
        rows[f"k{k}.pred"] = pred.numpy()
        rows[f"k{k}.top1"] = top1.numpy()
        rows[f"k{k}.top5"] = top5.numpy()
        metrics[f"knn.k{k}.top1"] = proportion(top1.numpy())
        metrics[f"knn.k{k}.top5"] = proportion(top5.numpy())

    empty = empty_classes(ytr, n_cls)
    info = {
        "n_train": n_train,
        "n_test": int(test.shape[0]),
        "dim": int(train.shape[1]),
        "num_classes": n_cls,
        "ks": list(ks),
        "effective_k": {str(k): eff[k] for k in ks},
        "k_clamped": [k for k in ks if eff[k] != k],
        "temperature": temperature,
        "device": str(dev),
        "train_chunk": train_chunk,
        "test_chunk": test_chunk,
        "empty_train_classes": empty,
        "n_test_in_empty_classes": int(np.isin(yte.numpy(), empty).sum()) if empty else 0,
    }
    return Result(evaluator="knn", metrics=metrics, rows=rows, info=info)


@torch.no_grad()
def topk_neighbours(
    train: torch.Tensor,
    test: torch.Tensor,
    k: int,
    *,
    device: torch.device | str = "cpu",
    train_chunk: int = DEFAULT_TRAIN_CHUNK,
    test_chunk: int = DEFAULT_TEST_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities and indices of each test row's k nearest train rows, sorted descending.

    The bank is the outer loop so each chunk is normalized (and moved to the device) once; the running
    top-k state for all test rows lives on the device ([N_test, k] values + indices).
    """
    device = torch.device(device)
    k = min(k, train.shape[0])
    q = F.normalize(test.to(device=device, dtype=torch.float32), dim=1)
    best_v = torch.full((q.shape[0], k), -torch.inf, device=device)
    best_i = torch.full((q.shape[0], k), -1, dtype=torch.int64, device=device)
    for b0 in range(0, train.shape[0], train_chunk):
        bank = F.normalize(train[b0 : b0 + train_chunk].to(device=device, dtype=torch.float32), dim=1)
        kk = min(k, bank.shape[0])
        for t0 in range(0, q.shape[0], test_chunk):
            s = q[t0 : t0 + test_chunk] @ bank.T
            v, i = s.topk(kk, dim=1)
            v = torch.cat([best_v[t0 : t0 + test_chunk], v], dim=1)
            i = torch.cat([best_i[t0 : t0 + test_chunk], i + b0], dim=1)
            v, j = v.topk(k, dim=1)
            best_v[t0 : t0 + test_chunk] = v
            best_i[t0 : t0 + test_chunk] = i.gather(1, j)
    return best_v.cpu(), best_i.cpu()


@torch.no_grad()
def vote(
    sims: torch.Tensor,
    nb_labels: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    temperature: float,
    chunk: int = DEFAULT_TEST_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predicted class, top-1 hit and top-5 hit per test row from exp(sim/T)-weighted votes.

    Ties between classes go to the lower class index (stable sort). A class with zero votes is never
    predicted, so with k < 5 top-5 cannot be won by the arbitrary order of zero-vote classes.
    """
    preds, top1, top5 = [], [], []
    for t0 in range(0, sims.shape[0], chunk):  # bounded [chunk, C] vote table
        s, nb, y = sims[t0 : t0 + chunk], nb_labels[t0 : t0 + chunk], labels[t0 : t0 + chunk]
        votes = torch.zeros(s.shape[0], num_classes, dtype=torch.float32)
        votes.scatter_add_(1, nb, (s.float() / temperature).exp())
        order = torch.sort(votes, dim=1, descending=True, stable=True).indices[:, : min(5, num_classes)]
        hit = (order == y[:, None]) & (votes.gather(1, order) > 0)
        preds.append(order[:, 0])
        top1.append(hit[:, 0])
        top5.append(hit.any(dim=1))
    return torch.cat(preds), torch.cat(top1), torch.cat(top5)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(int(k) for k in ks)
    except (TypeError, ValueError):
        raise InputError(f"ks must be positive integers, got {ks!r}") from None
    if not out or any(k < 1 for k in out) or any(int(k) != k for k in ks):
        raise InputError(f"ks must be positive integers, got {ks!r}")
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class KnnOptions:
    ks: tuple[int, ...] = DEFAULT_KS
    temperature: float = 0.07

    def __post_init__(self) -> None:
        _check_ks(self.ks)
        if not self.temperature > 0:
            raise InputError(f"--temperature must be positive, got {self.temperature}")


@register
class Knn(Evaluator):
    """DINO's weighted k-NN on pooled features; classes come from the training split."""

    name = "knn"
    description = "Weighted k-NN (DINO protocol) on pooled features."
    taps = frozenset({"pooled"})
    splits = ("train", "test")
    needs = frozenset({"labels"})
    metrics = {"knn.*": MetricInfo("percent", "higher")}
    Options = KnnOptions

    def check(self, plan) -> None:
        n = plan.train.size
        big = [k for k in self.options.ks if k > n]
        if big:
            raise InputError(f"--ks {','.join(map(str, big))}: larger than the {n} training images "
                             f"({plan.train.source}); a k-NN with k > N would silently use N")

    def evaluate(self, inputs: Inputs) -> Result:
        train = inputs.train
        return evaluate(train.get("pooled"), train.labels, inputs.test.get("pooled"), inputs.test.labels,
                        test_ids=inputs.test.ids, ks=self.options.ks, temperature=self.options.temperature,
                        num_classes=len(inputs.classes), device=inputs.plan.eval_device)
