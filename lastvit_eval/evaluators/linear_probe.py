"""Linear probe: multinomial logistic regression on cached features, in torch.

Many candidate heads (a grid over learning rate x L2 weight decay) train together: their weights are
concatenated into one [D, m*C] matrix, so each minibatch costs one matmul and one optimizer step
updates every candidate. The best candidate is chosen on a seeded, stratified hold-out carved from the
TRAINING split; the chosen configuration is then refit on the whole training split and scored on test.
The objective per candidate is mean cross-entropy + wd/2 * ||W||^2 (bias unpenalized), i.e.
scikit-learn's LogisticRegression with C = 1 / (wd * n_train).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..result import Result
from ..stats import proportion
from . import register
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
from .scoring import mean_per_class_recall_metric, per_class_table, topk_hits

DEFAULT_LRS = (2e-3,)
DEFAULT_WDS = (0.0, 1e-5, 1e-4, 1e-3)
_STAT_CHUNK = 65536


@dataclass(frozen=True)
class Standardizer:
    """Per-feature mean/std from the rows a head is fit on; applied per minibatch (no full copy)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> Standardizer:
        s1 = torch.zeros(x.shape[1], dtype=torch.float64)
        s2 = torch.zeros(x.shape[1], dtype=torch.float64)
        for i in range(0, x.shape[0], _STAT_CHUNK):
            c = x[i : i + _STAT_CHUNK].double()
            s1 += c.sum(0)
            s2 += (c * c).sum(0)
        mean = s1 / x.shape[0]
        std = (s2 / x.shape[0] - mean * mean).clamp_min(0).sqrt()
        std = torch.where(std > 1e-12 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
        return cls(mean.float(), std.float())

    def __call__(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        x = x.to(device=device, dtype=torch.float32)
        return (x - self.mean.to(device)) / self.std.to(device)


@dataclass
class Heads:
    """m linear heads on standardized features: W [D, m*C], b [m*C]."""

    scaler: Standardizer
    weight: torch.Tensor
    bias: torch.Tensor
    num_classes: int

    @torch.no_grad()
    def logits(self, x: torch.Tensor, device: torch.device, chunk: int = 8192) -> torch.Tensor:
        """[N, m, C] logits on CPU."""
        m = self.weight.shape[1] // self.num_classes
        out = []
        for i in range(0, x.shape[0], chunk):
            z = self.scaler(x[i : i + chunk], device) @ self.weight + self.bias
            out.append(z.view(-1, m, self.num_classes).cpu())
        return torch.cat(out)


def fit_heads(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    configs: Sequence[tuple[float, float]],
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> Heads:
    """Train one head per (lr, wd) config jointly with Adam and a cosine schedule, from zero init."""
    gen = torch.Generator().manual_seed(seed)
    scaler = Standardizer.fit(x)
    d, m = x.shape[1], len(configs)
    ws = [torch.zeros(d, num_classes, device=device, requires_grad=True) for _ in configs]
    bs = [torch.zeros(num_classes, device=device, requires_grad=True) for _ in configs]
    groups = []
    for (lr, wd), w, b in zip(configs, ws, bs, strict=True):
        groups.append({"params": [w], "lr": lr, "weight_decay": wd})  # L2 in the gradient = coupled penalty
        groups.append({"params": [b], "lr": lr, "weight_decay": 0.0})
    opt = torch.optim.Adam(groups, fused=True)  # the per-tensor loop is several times slower on CPU
    steps = epochs * math.ceil(x.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i : i + batch_size]
            xb, yb = scaler(x[idx], device), y[idx].to(device)
            z = xb @ torch.cat(ws, dim=1) + torch.cat(bs)
            # Sum over candidates of each one's mean cross-entropy: the candidates stay independent.
            loss = F.cross_entropy(z.view(-1, num_classes), yb.repeat_interleave(m), reduction="sum")
            loss = loss / yb.shape[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return Heads(scaler, torch.cat(ws, dim=1).detach(), torch.cat(bs).detach(), num_classes)


def stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of hold-out rows: floor(fraction * n_c) random rows of each class c (seeded)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(y.size)
    order = perm[np.argsort(y[perm], kind="stable")]  # grouped by class, random within class
    ys = y[order]
    starts = np.searchsorted(ys, ys, side="left")
    rank = np.arange(y.size) - starts
    counts = np.bincount(y)
    mask = np.zeros(y.size, dtype=bool)
    mask[order] = rank < np.floor(fraction * counts[ys])
    return mask


def select_config(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    configs: Sequence[tuple[float, float]],
    *,
    holdout_fraction: float,
    epochs: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> tuple[int, pd.DataFrame]:
    """Index of the best config by hold-out top-1 (ties: first in grid order) and the selection table.

    Sees the training split only: the hold-out is carved from `x`, `y`.
    """
    hold = stratified_holdout(y.numpy(), holdout_fraction, seed)
    if hold.sum() == 0 or (~hold).sum() == 0:
        raise InputError(f"linear probe: hold-out fraction {holdout_fraction} leaves an empty split")
    hold_t = torch.from_numpy(hold)
    heads = fit_heads(x[~hold_t], y[~hold_t], num_classes, configs, epochs=epochs, batch_size=batch_size,
                      seed=seed, device=device)
    z = heads.logits(x[hold_t], device)  # [n_hold, m, C]
    acc = (z.argmax(dim=2) == y[hold_t][:, None]).double().mean(dim=0).numpy() * 100.0
    table = pd.DataFrame({"lr": [c[0] for c in configs], "weight_decay": [c[1] for c in configs],
                          "holdout_top1": acc})
    return int(np.argmax(acc)), table


@register("linear_probe", taps=("pooled",), description="Multinomial logistic regression on pooled features")
def evaluate(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
    *,
    test_ids: Sequence | None = None,
    num_classes: int | None = None,
    lrs: Sequence[float] = DEFAULT_LRS,
    weight_decays: Sequence[float] = DEFAULT_WDS,
    epochs: int = 5,
    batch_size: int = 1024,
    holdout_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Result:
    """Top-1/top-5 (Wilson CIs) and mean per-class recall (bootstrap CI) of the refit best head."""
    train = as_features(train_feats, "train_feats")
    test = as_features(test_feats, "test_feats")
    same_width(train, test, "train_feats", "test_feats")
    ytr = as_labels(train_labels, "train_labels", train.shape[0])
    yte = as_labels(test_labels, "test_labels", test.shape[0])
    n_cls = resolve_num_classes(ytr, num_classes)
    labels_in_range(yte, n_cls, "test_labels")
    ids = as_ids(test_ids, test.shape[0])
    configs = _grid(lrs, weight_decays)
    if epochs < 1 or batch_size < 1:
        raise InputError(f"epochs and batch_size must be positive, got {epochs=}, {batch_size=}")
    if not 0.0 < holdout_fraction < 1.0:
        raise InputError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    dev = resolve_device(device)

    kw = {"epochs": epochs, "batch_size": batch_size, "seed": seed, "device": dev}
    if len(configs) > 1:
        best, selection = select_config(train, ytr, n_cls, configs, holdout_fraction=holdout_fraction, **kw)
    else:
        best, selection = 0, pd.DataFrame({"lr": [configs[0][0]], "weight_decay": [configs[0][1]],
                                           "holdout_top1": [float("nan")]})
    lr, wd = configs[best]
    heads = fit_heads(train, ytr, n_cls, [(lr, wd)], **kw)
    z = heads.logits(test, dev)[:, 0]
    pred, top1, top5 = topk_hits(z, yte)
    yn = yte.numpy()
    rows = pd.DataFrame({"image_id": ids, "label": yn, "pred": pred, "top1": top1, "top5": top5})
    metrics = {
        "linear_probe.top1": proportion(top1),
        "linear_probe.top5": proportion(top5),
        "linear_probe.mean_per_class_recall": mean_per_class_recall_metric(yn, top1, seed=seed),
    }
    info = {
        "n_train": int(train.shape[0]),
        "n_test": int(test.shape[0]),
        "dim": int(train.shape[1]),
        "num_classes": n_cls,
        "chosen_lr": lr,
        "chosen_weight_decay": wd,
        "chosen_sklearn_C": (1.0 / (wd * train.shape[0])) if wd > 0 else None,
        "n_candidates": len(configs),
        "holdout_fraction": holdout_fraction,
        "selection": selection.to_dict(orient="records"),
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "device": str(dev),
        "empty_train_classes": empty_classes(ytr, n_cls),
    }
    tables = {"per_class": per_class_table(yn, top1), "selection": selection}
    return Result("linear_probe", metrics, rows=rows, tables=tables, info=info)


def _grid(lrs: Sequence[float], wds: Sequence[float]) -> list[tuple[float, float]]:
    configs = [(float(lr), float(wd)) for lr, wd in itertools.product(lrs, wds)]
    if not configs:
        raise InputError("linear probe: empty hyperparameter grid")
    if any(not (lr > 0) for lr, _ in configs) or any(not (wd >= 0) for _, wd in configs):
        raise InputError(f"linear probe: learning rates must be > 0 and weight decays >= 0, got {configs}")
    return configs
