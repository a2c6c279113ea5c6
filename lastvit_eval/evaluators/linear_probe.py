"""Linear probe: multinomial logistic regression on cached features, in torch.

The objective per candidate is mean cross-entropy + wd/2 * ||W||^2 on standardized features (bias
unpenalized), i.e. scikit-learn's LogisticRegression with C = 1 / (wd * n_train). The best weight decay
is chosen on a seeded, stratified hold-out carved from the TRAINING split (standardized with the
statistics of the rows it is fit on); the chosen one is then refit on the whole training split and
scored on test. Two solvers:

- "lbfgs" (default): full-batch L-BFGS along a regularization path, strongest penalty first, each
  candidate warm-started from the previous (with its curvature pairs); the refit starts from the chosen
  hold-out solution, in the same standardized space (an exact reparameterization of the refit's
  objective, so the fit rows are neither standardized nor read again for its first gradient). Every
  candidate is solved to max |gradient| <= selection_tol * max |gradient at zero| and the refit to
  tol * the same, thresholds that mean the same for every candidate and scale; the passes, the final
  gradient and why each stopped land in the selection table. See logreg_lbfgs.py.
- "adam": a grid over learning rate x weight decay trained jointly by minibatch Adam for a fixed number
  of epochs (weights concatenated into one [D, m*C] matrix: one matmul per minibatch for all heads).
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
from .logreg_lbfgs import MIN_BF16_MACS, Fit, LinearHead, Objective, choose_dtype, lbfgs
from .scoring import mean_per_class_recall_metric, per_class_table, topk_hits
from .standardize import Moments, Standardizer

SOLVERS = ("lbfgs", "adam")
DEFAULT_LRS = (2e-3,)  # adam only
DEFAULT_EPOCHS, DEFAULT_BATCH = 5, 1024  # adam only
# Half-decade steps; the L-BFGS path visits them strongest first (cheap: each starts near its answer).
DEFAULT_WDS = (3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 0.0)
# lbfgs: max |gradient| relative to its value at W = 0, for the refit (the head that is scored on test) and
# for the candidates on the hold-out path (which are only ranked). bf16 passes round each gradient block to
# 2^-9 relative and stall near 1e-3. The refit's 3e-2 is 3x tighter than scikit-learn's default (tol 1e-4
# absolute is 9.2e-2 relative at 100k x 768 x 1000 classes, 9e-3 at 100 classes); the path's 1e-1 is about
# scikit-learn's there, and ranks the default grid as the path at 3e-2 did (results/bench_knn_probe.md).
# fp32 passes run only on problems small enough to be cheap (logreg_lbfgs.MIN_BF16_MACS), which are solved
# close to their optimum, path and refit alike.
DEFAULT_RTOL = {"bf16": 3e-2, "fp32": 1e-4}
DEFAULT_SELECTION_RTOL = {"bf16": 1e-1, "fp32": 1e-4}


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


def _holdout_rows(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    hold = stratified_holdout(y.numpy(), fraction, seed)
    if hold.sum() == 0 or (~hold).sum() == 0:
        raise InputError(f"linear probe: hold-out fraction {fraction} leaves an empty split")
    return torch.from_numpy(np.flatnonzero(~hold)), torch.from_numpy(np.flatnonzero(hold))


@dataclass
class Selection:
    """The hold-out path's outcome, kept for the refit: which weight decay won, its solution (with its L-BFGS
    memory and its data term on the fit rows), the objective on the fit rows and their statistics, the
    hold-out rows standardized with those statistics (and their class sums), and the moments of all rows."""

    index: int
    fit: Fit
    objective: Objective
    scaler: Standardizer
    table: pd.DataFrame
    hold_xs: torch.Tensor
    hold_y: torch.Tensor
    hold_sums: torch.Tensor
    moments: Moments


def _top1(xs: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, chunk: int) -> float:
    """Top-1 (percent) of the head (w, b) on rows already standardized, in their dtype (the passes' own)."""
    wc = w.to(xs.dtype)
    hits = sum(int(((xs[i : i + chunk] @ wc).float().add_(b).argmax(1) == y[i : i + chunk]).sum())
               for i in range(0, xs.shape[0], chunk))
    return 100.0 * hits / xs.shape[0]


def select_weight_decay(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    wds: Sequence[float],
    *,
    holdout_fraction: float,
    seed: int,
    tol: float,
    max_iter: int,
    dtype: torch.dtype,
    device: torch.device,
    chunk: int,
) -> Selection:
    """L-BFGS path on the fit part of a hold-out carved from the TRAINING split (x, y) only; the best
    hold-out top-1 wins (ties: first in `wds` order)."""
    fit_rows, hold_rows = _holdout_rows(y, holdout_fraction, seed)
    fit_m, hold_m = Moments.of(x, fit_rows, y, num_classes), Moments.of(x, hold_rows, y, num_classes)
    scaler = fit_m.standardizer()
    obj = Objective(x, y, num_classes, scaler, rows=fit_rows, dtype=dtype, device=device, chunk=chunk,
                    class_sums=fit_m.standardized_class_sums(scaler))
    # standardized once, with the fit rows' statistics: scored for every candidate, then added for the refit
    hold_xs, hold_y = scaler.transform(x, dtype, device, rows=hold_rows), y[hold_rows].to(device)
    order = sorted(range(len(wds)), key=lambda i: -wds[i])  # strongest penalty first
    acc: dict[float, float] = {}
    best: list[Fit] = []

    def score(f: Fit) -> None:
        acc[f.weight_decay] = _top1(hold_xs, hold_y, f.weight, f.bias, chunk)
        if best and acc[f.weight_decay] <= acc[best[0].weight_decay]:
            f.memory = None  # keep one L-BFGS memory (the best so far), not one per candidate
        else:
            best[:] = [f]

    fits = lbfgs(obj, torch.zeros(x.shape[1], num_classes), torch.zeros(num_classes),
                 [wds[i] for i in order], rtol=tol, max_iter=max_iter, on_fit=score)
    by_wd = {f.weight_decay: f for f in fits}
    table = pd.DataFrame({
        "weight_decay": [float(w) for w in wds],
        "holdout_top1": [acc[float(w)] for w in wds],
        "iterations": [by_wd[float(w)].iterations for w in wds],
        "passes": [by_wd[float(w)].passes for w in wds],
        "loss": [by_wd[float(w)].loss for w in wds],
        "grad_max": [by_wd[float(w)].grad_max for w in wds],
        "grad_rel": [by_wd[float(w)].grad_rel for w in wds],
        "stop": [by_wd[float(w)].stop for w in wds],
    })
    i = int(np.argmax(table["holdout_top1"].to_numpy()))
    chosen = by_wd[float(wds[i])]
    if chosen.memory is None:  # a tie with an earlier-visited candidate: same accuracy, use its memory
        chosen = Fit(**{**chosen.__dict__, "memory": best[0].memory})
    return Selection(i, chosen, obj, scaler, table, hold_xs, hold_y, hold_m.standardized_class_sums(scaler),
                     fit_m + hold_m)


def refit_after_selection(sel: Selection, wd: float, *, tol: float, max_iter: int) -> tuple[LinearHead, Fit]:
    """Refit on all training rows, warm-started from the chosen solution, in the fit rows' standardized space.

    The refit's objective is scikit-learn's on all rows standardized with ALL rows' statistics (mean m',
    std s'): mean cross-entropy + wd/2 ||W'||^2. With x = X s + m for the fit rows' standardization X,
    X' = X diag(s/s') + (m - m')/s', so X' W' + b' = X W + b for W = diag(s/s') W' and b = b' + (m - m')/s' W':
    the same objective, exactly, in (W, b) with the penalty wd/2 sum_k (s'_k/s_k)^2 ||W_k||^2. Solved there,
    the fit rows' standardized copy and the chosen solution's data term on them are reused: only the
    hold-out rows are added, and the first gradient reads only them. The head's logits are those of the
    all-rows head (Standardizer.carry maps one to the other exactly).
    """
    obj, start = sel.objective, sel.fit
    n_fit = obj.n
    obj.extend(sel.hold_xs, sel.hold_y, sel.hold_sums)
    if start.data is not None:
        obj.seed(start.weight, start.bias, start.data, n_fit)
    weights = (sel.moments.standardizer().std.double() / sel.scaler.std.double()).square().float()
    fit = lbfgs(obj, start.weight, start.bias, [wd], rtol=tol, max_iter=max_iter, memory=start.memory,
                weights=weights)[0]
    return LinearHead(sel.scaler, fit.weight, fit.bias), fit


def refit(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    wd: float,
    *,
    tol: float,
    max_iter: int,
    dtype: torch.dtype,
    device: torch.device,
    chunk: int,
) -> tuple[LinearHead, Fit]:
    """One fit from zero on all rows (their own statistics): a grid of one needs no selection."""
    moments = Moments.of(x, None, y, num_classes)
    scaler = moments.standardizer()
    obj = Objective(x, y, num_classes, scaler, dtype=dtype, device=device, chunk=chunk,
                    class_sums=moments.standardized_class_sums(scaler))
    fit = lbfgs(obj, torch.zeros(x.shape[1], num_classes), torch.zeros(num_classes), [wd], rtol=tol,
                max_iter=max_iter)[0]
    return LinearHead(scaler, fit.weight, fit.bias), fit


def evaluate(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
    *,
    test_ids: Sequence | None = None,
    num_classes: int | None = None,
    weight_decays: Sequence[float] = DEFAULT_WDS,
    solver: str = "lbfgs",
    tol: float | None = None,
    selection_tol: float | None = None,
    max_iter: int = 100,
    precision: str = "bf16",
    chunk: int = 8192,
    min_bf16_macs: int = MIN_BF16_MACS,
    lrs: Sequence[float] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    holdout_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Result:
    """Top-1/top-5 (Wilson CIs) and mean per-class recall (bootstrap CI) of the refit best head.

    lbfgs: `tol` (the refit's max |gradient| relative to its value at W = 0; None: DEFAULT_RTOL of the
    precision used), `selection_tol` (the same for the candidates on the hold-out path; None:
    DEFAULT_SELECTION_RTOL), `max_iter` (L-BFGS iterations per candidate), `precision` ("bf16": bf16 passes when
    rows * dim * classes >= `min_bf16_macs`, else fp32; "fp32"; info["precision_used"] says which ran),
    `chunk` (rows per matmul).
    adam: `lrs`, `epochs`, `batch_size` (defaults DEFAULT_LRS, DEFAULT_EPOCHS, DEFAULT_BATCH).
    """
    train = as_features(train_feats, "train_feats")
    test = as_features(test_feats, "test_feats")
    same_width(train, test, "train_feats", "test_feats")
    ytr = as_labels(train_labels, "train_labels", train.shape[0])
    yte = as_labels(test_labels, "test_labels", test.shape[0])
    n_cls = resolve_num_classes(ytr, num_classes)
    labels_in_range(yte, n_cls, "test_labels")
    ids = as_ids(test_ids, test.shape[0])
    if solver not in SOLVERS:
        raise InputError(f"linear probe: solver must be one of {SOLVERS}, got {solver!r}")
    if not 0.0 < holdout_fraction < 1.0:
        raise InputError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    dev = resolve_device(device)
    if solver == "adam":
        z, info, selection = _adam(train, ytr, test, n_cls, lrs, weight_decays, epochs, batch_size,
                                   holdout_fraction, seed, dev)
    else:
        if lrs is not None or epochs is not None or batch_size is not None:
            raise InputError("linear probe: lrs, epochs and batch_size apply to solver='adam' only")
        if any(t is not None and not t > 0 for t in (tol, selection_tol)) or max_iter < 1 or chunk < 1:
            raise InputError(f"linear probe: tol, selection_tol, max_iter and chunk must be positive, got {tol=}, "
                             f"{selection_tol=}, {max_iter=}, {chunk=}")
        z, info, selection = _lbfgs(train, ytr, test, n_cls, weight_decays, tol, selection_tol, max_iter, precision,
                                    chunk, holdout_fraction, seed, dev, min_bf16_macs)
    pred, top1, top5 = topk_hits(z, yte)
    yn = yte.numpy()
    rows = pd.DataFrame({"image_id": ids, "label": yn, "pred": pred, "top1": top1, "top5": top5})
    metrics = {
        "linear_probe.top1": proportion(top1),
        "linear_probe.top5": proportion(top5),
        "linear_probe.mean_per_class_recall": mean_per_class_recall_metric(yn, top1, seed=seed),
    }
    wd = info["chosen_weight_decay"]
    info = {
        "n_train": int(train.shape[0]),
        "n_test": int(test.shape[0]),
        "dim": int(train.shape[1]),
        "num_classes": n_cls,
        "solver": solver,
        **info,
        "chosen_sklearn_C": (1.0 / (wd * train.shape[0])) if wd > 0 else None,
        "n_candidates": len(selection),
        "holdout_fraction": holdout_fraction,
        "selection": selection.to_dict(orient="records"),
        "seed": seed,
        "device": str(dev),
        "empty_train_classes": empty_classes(ytr, n_cls),
    }
    tables = {"per_class": per_class_table(yn, top1), "selection": selection}
    return Result("linear_probe", metrics, rows=rows, tables=tables, info=info)


def _lbfgs(train, ytr, test, n_cls, weight_decays, tol, selection_tol, max_iter, precision, chunk,
           holdout_fraction, seed, dev, min_bf16_macs) -> tuple[torch.Tensor, dict, pd.DataFrame]:
    dtype = choose_dtype(precision, train.shape[0], train.shape[1], n_cls, min_bf16_macs)
    used = "bf16" if dtype == torch.bfloat16 else "fp32"
    tol = DEFAULT_RTOL[used] if tol is None else tol
    selection_tol = DEFAULT_SELECTION_RTOL[used] if selection_tol is None else selection_tol
    wds = _weight_decays(weight_decays)
    kw = {"max_iter": max_iter, "dtype": dtype, "device": dev, "chunk": chunk}
    if len(wds) > 1:
        sel = select_weight_decay(train, ytr, n_cls, wds, holdout_fraction=holdout_fraction, seed=seed,
                                  tol=selection_tol, **kw)
        best, selection = sel.index, sel.table
        head, fit = refit_after_selection(sel, wds[best], tol=tol, max_iter=max_iter)
        del sel
    else:
        best, selection = 0, pd.DataFrame({"weight_decay": wds, "holdout_top1": [float("nan")]})
        head, fit = refit(train, ytr, n_cls, wds[0], tol=tol, **kw)
    z = head.logits(test, dev, chunk)
    passes = float(selection["passes"].sum()) if "passes" in selection else 0.0
    info = {"chosen_weight_decay": wds[best], "tol": tol, "tol_abs": tol * fit.grad_scale,
            "selection_tol": selection_tol, "max_iter": max_iter, "precision": precision, "precision_used": used,
            "min_bf16_macs": min_bf16_macs, "chunk": chunk, "refit_iterations": fit.iterations,
            "refit_passes": fit.passes, "refit_grad_max": fit.grad_max, "refit_grad_rel": fit.grad_rel,
            "refit_stop": fit.stop, "refit_loss": fit.loss, "passes_total": round(passes + fit.passes, 4)}
    return z, info, selection


def _adam(train, ytr, test, n_cls, lrs, weight_decays, epochs, batch_size, holdout_fraction, seed,
          dev) -> tuple[torch.Tensor, dict, pd.DataFrame]:
    lrs = DEFAULT_LRS if lrs is None else lrs
    epochs = DEFAULT_EPOCHS if epochs is None else epochs
    batch_size = DEFAULT_BATCH if batch_size is None else batch_size
    configs = _grid(lrs, weight_decays)
    if epochs < 1 or batch_size < 1:
        raise InputError(f"epochs and batch_size must be positive, got {epochs=}, {batch_size=}")
    kw = {"epochs": epochs, "batch_size": batch_size, "seed": seed, "device": dev}
    if len(configs) > 1:
        best, selection = select_config(train, ytr, n_cls, configs, holdout_fraction=holdout_fraction, **kw)
    else:
        best, selection = 0, pd.DataFrame({"lr": [configs[0][0]], "weight_decay": [configs[0][1]],
                                           "holdout_top1": [float("nan")]})
    lr, wd = configs[best]
    heads = fit_heads(train, ytr, n_cls, [(lr, wd)], **kw)
    z = heads.logits(test, dev)[:, 0]
    info = {"chosen_lr": lr, "chosen_weight_decay": wd, "epochs": epochs, "batch_size": batch_size}
    return z, info, selection


def _weight_decays(wds: Sequence[float]) -> list[float]:
    out = [float(w) for w in wds]
    if not out:
        raise InputError("linear probe: empty hyperparameter grid")
    if any(not (w >= 0) for w in out) or len(set(out)) != len(out):
        raise InputError(f"linear probe: weight decays must be >= 0 and distinct, got {out}")
    return out


def _grid(lrs: Sequence[float], wds: Sequence[float]) -> list[tuple[float, float]]:
    configs = [(float(lr), float(wd)) for lr, wd in itertools.product(lrs, wds)]
    if not configs:
        raise InputError("linear probe: empty hyperparameter grid")
    if any(not (lr > 0) for lr, _ in configs) or any(not (wd >= 0) for _, wd in configs):
        raise InputError(f"linear probe: learning rates must be > 0 and weight decays >= 0, got {configs}")
    return configs


@dataclass(frozen=True)
class ProbeOptions:
    weight_decays: tuple[float, ...] = DEFAULT_WDS
    solver: str = "lbfgs"
    holdout_fraction: float = 0.1
    precision: str = "bf16"
    lrs: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise InputError(f"--solver {self.solver!r}: use one of {', '.join(SOLVERS)}")
        if not self.weight_decays or any(not (w >= 0 and math.isfinite(w)) for w in self.weight_decays):
            raise InputError(f"--weight-decays {self.weight_decays}: give finite values >= 0")
        if not 0 < self.holdout_fraction < 1:
            raise InputError(f"--holdout-fraction {self.holdout_fraction}: must be in (0, 1)")
        from .logreg_lbfgs import PRECISIONS

        if self.precision not in PRECISIONS:
            raise InputError(f"--probe-precision {self.precision!r}: use one of {', '.join(sorted(PRECISIONS))}")
        if self.lrs is not None and self.solver != "adam":
            raise InputError("--lrs applies to --solver adam only")

    def kwargs(self) -> dict:
        out = {"weight_decays": self.weight_decays, "solver": self.solver, "holdout_fraction": self.holdout_fraction}
        if self.solver == "lbfgs":
            out["precision"] = self.precision
        if self.lrs is not None:
            out["lrs"] = self.lrs
        return out


@register
class LinearProbe(Evaluator):
    """Logistic regression on frozen pooled features, weight decay chosen on a hold-out of the training split."""

    name = "linear-probe"
    description = "Multinomial logistic regression on pooled features (hold-out selection, refit)."
    taps = frozenset({"pooled"})
    splits = ("train", "test")
    needs = frozenset({"labels"})
    metrics = {"linear_probe.*": MetricInfo("percent", "higher")}
    Options = ProbeOptions

    def check(self, plan) -> None:
        """The hold-out is carved from the training labels, known before any forward: check it now."""
        o = self.options
        if len(o.weight_decays) * len(o.lrs or (None,)) < 2:
            return  # a single candidate: nothing to select, no hold-out
        y = plan.labels(plan.train)
        hold = stratified_holdout(y[y >= 0], o.holdout_fraction, plan.seed)
        if hold.sum() == 0 or (~hold).sum() == 0:
            smallest = int(np.bincount(y[y >= 0]).min())
            raise InputError(f"--holdout-fraction {o.holdout_fraction}: holds out no image of {plan.train.source} "
                             f"(smallest class has {smallest}); raise it to at least {1 / max(smallest, 1):.2g}")

    def evaluate(self, inputs: Inputs) -> Result:
        train = inputs.train
        return evaluate(train.get("pooled"), train.labels, inputs.test.get("pooled"), inputs.test.labels,
                        test_ids=inputs.test.ids, num_classes=len(inputs.classes), seed=inputs.plan.seed,
                        device=inputs.plan.eval_device, **self.options.kwargs())
