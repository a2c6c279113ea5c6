"""Full-batch L-BFGS for multinomial logistic regression on standardized features.

Why full batch: one pass over the rows is two large matmuls per chunk (logits, then X^T (P - Y)), which
use every core far better than minibatch steps; bf16 matmuls (fp32 accumulation inside the GEMM, fp32
softmax, loss and gradient sums) are several times faster than fp32 on CPUs with avx512_bf16/AMX.
The objective is mean cross-entropy + wd/2 ||W||^2 (bias unpenalized), i.e. scikit-learn's
LogisticRegression with C = 1 / (wd * n). Stopping follows scikit-learn's lbfgs: max |gradient| <= tol.
A regularization path runs strongest penalty first, each candidate warm-started from the previous one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError
from .standardize import Standardizer

PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}


def compute_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise InputError(f"linear probe: precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


@dataclass
class LinearHead:
    """A head on standardized features: logits = (x - mean) / std @ W + b."""

    scaler: Standardizer
    weight: torch.Tensor
    bias: torch.Tensor

    @torch.no_grad()
    def logits(self, x: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32,
               chunk: int = 8192) -> torch.Tensor:
        """[N, C] float32 logits on CPU, chunk by chunk (matmul in `dtype`, as in training)."""
        w = self.weight.to(device=device, dtype=dtype)
        b = self.bias.to(device)
        out = [((self.scaler(x[i : i + chunk], device).to(dtype) @ w).float() + b).cpu()
               for i in range(0, x.shape[0], chunk)]
        return torch.cat(out)


class Objective:
    """Mean softmax cross-entropy of a linear head on a standardized copy of x[rows], chunk by chunk.

    The rows are standardized once into `dtype` (bf16: half the float32 input's size); per-chunk
    workspaces are preallocated, so a pass allocates nothing large. The last (loss, gradient) is
    memoized on (W, b): L-BFGS re-evaluates its starting point on every call, and moving along the
    path changes only the penalty term. `passes` counts full passes over the rows.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, scaler: Standardizer, *,
                 rows: torch.Tensor | None = None, dtype: torch.dtype, device: torch.device,
                 chunk: int = 8192) -> None:
        self.xs = scaler.transform(x, dtype, device, rows=rows)
        self.y = (y if rows is None else y[rows]).to(device)
        self.n, self.dim = self.xs.shape
        self.num_classes, self.dtype, self.device = num_classes, dtype, device
        self.chunk = max(1, min(chunk, self.n))
        self.passes = 0
        self._memo: tuple | None = None
        self._class_sums: torch.Tensor | None = None

    def data_term(self, w: torch.Tensor, b: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
        """(mean cross-entropy, its gradient in W [D, C], in b [C]) at float32 (W, b)."""
        m = self._memo
        if m is not None and torch.equal(m[0], w) and torch.equal(m[1], b):
            return m[2], m[3], m[4]
        with torch.no_grad():
            out = self._at_zero(b) if not bool(w.any()) else self._pass(w, b)
        self._memo = (w.detach().clone(), b.detach().clone(), *out)
        return out

    def _at_zero(self, b: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
        """W = 0: every row predicts softmax(b), so class sums give the exact loss and gradient."""
        if self._class_sums is None:
            sums = torch.zeros(self.num_classes, self.dim, device=self.device)
            for i in range(0, self.n, self.chunk):
                sums.index_add_(0, self.y[i : i + self.chunk], self.xs[i : i + self.chunk].float())
            self._class_sums = sums
        sums, n = self._class_sums, self.n
        prior = torch.bincount(self.y, minlength=self.num_classes).float() / n
        lp = torch.log_softmax(b.float(), 0)
        p = lp.exp()
        loss = -float((prior.double() * lp.double()).sum())
        gw = (sums.sum(0) / n)[:, None] * p[None, :] - sums.T / n
        return loss, gw.contiguous(), p - prior

    def _pass(self, w: torch.Tensor, b: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
        self.passes += 1
        low = self.dtype != torch.float32
        k, c, dev = self.chunk, self.num_classes, self.device
        z_all, zmax_all, zsum_all = (torch.empty(k, c, device=dev), torch.empty(k, device=dev),
                                     torch.empty(k, device=dev))
        zl_all = torch.empty(k, c, dtype=self.dtype, device=dev) if low else None
        gw_part = torch.empty(self.dim, c, dtype=self.dtype, device=dev) if low else None
        minus_one = torch.full((k, 1), -1.0, device=dev)
        gw, gb = torch.zeros(self.dim, c, device=dev), torch.zeros(c, device=dev)
        loss = torch.zeros((), dtype=torch.float64, device=dev)
        wc = w.detach().to(self.dtype)
        for i in range(0, self.n, k):
            xc, yc = self.xs[i : i + k], self.y[i : i + k, None]
            r = xc.shape[0]
            z, zmax, zsum = z_all[:r], zmax_all[:r], zsum_all[:r]
            if low:
                torch.matmul(xc, wc, out=zl_all[:r])
                torch.add(zl_all[:r], b, out=z)
            else:
                torch.addmm(b, xc, wc, out=z)
            # Softmax by hand (max, exp, sum): torch.logsumexp plus a second exp costs twice as much.
            loss -= z.gather(1, yc).sum(dtype=torch.float64)
            torch.amax(z, 1, out=zmax)
            z.sub_(zmax[:, None]).exp_()
            torch.sum(z, 1, out=zsum)
            loss += zsum.log().add_(zmax).sum(dtype=torch.float64)  # sum of log-sum-exp
            z.div_(zsum[:, None]).scatter_add_(1, yc, minus_one[:r])  # softmax - one-hot
            gb += z.sum(0)
            if low:
                zl_all[:r].copy_(z)
                gw += torch.matmul(xc.T, zl_all[:r], out=gw_part)
            else:
                gw.addmm_(xc.T, z)
        return float(loss) / self.n, gw.div_(self.n), gb.div_(self.n)

    def closure(self, w: torch.Tensor, b: torch.Tensor, wd: float) -> Callable[[], float]:
        """Closure for torch.optim.LBFGS: sets w.grad, b.grad and returns the penalized loss."""

        @torch.no_grad()
        def f() -> float:
            loss, gw, gb = self.data_term(w, b)
            w.grad = gw + wd * w
            b.grad = gb.clone()
            return loss + 0.5 * wd * float(w.square().sum())

        return f


@dataclass
class Fit:
    """One solution on the path, with its L-BFGS cost and state (to warm-start a refit)."""

    weight_decay: float
    weight: torch.Tensor
    bias: torch.Tensor
    iterations: int
    passes: int
    loss: float
    memory: dict | None = None


def lbfgs(obj: Objective, w: torch.Tensor, b: torch.Tensor, wds: Sequence[float], *, tol: float,
          max_iter: int, history: int = 10, memory: dict | None = None,
          on_fit: Callable[[Fit], None] | None = None) -> list[Fit]:
    """Solve for each weight decay in order, each warm-started from the previous solution.

    Warm starts keep W, b and the L-BFGS curvature memory (`memory`: a Fit's state, e.g. from the
    hold-out fit, for the refit); the step that would straddle two objectives is dropped from it.
    A fresh start's first trial step is 1/h along -g, h = 1/C + wd, instead of torch's 1/|g|_1 (far
    too short for 768k-parameter heads, costing passes to extrapolate): at uniform predictions the
    cross-entropy's curvature is ~1/C per unit of standardized feature variance, so from W = 0 that
    step is the class-mean classifier at the Newton scale.
    """
    w = w.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                            history_size=history, line_search_fn="strong_wolfe")
    group = opt.param_groups[0]
    if memory is not None:
        opt.load_state_dict(copy.deepcopy(memory))
        group.update(max_iter=max_iter, tolerance_grad=tol, history_size=history)
    fits = []
    for wd in wds:
        state = opt.state[w]
        it0, p0 = state.get("n_iter", 0), obj.passes
        closure = obj.closure(w, b, float(wd))
        if it0 == 0:
            closure()  # memoized: step() re-evaluates this point for free
            g1 = float(w.grad.abs().sum() + b.grad.abs().sum())
            group.update(lr=(1.0 / (1.0 / obj.num_classes + wd)) / min(1.0, 1.0 / max(g1, 1e-30)), max_iter=1)
            opt.step(closure)
            group.update(lr=1.0, max_iter=max_iter - 1)
            if max_iter > 1:
                opt.step(closure)
            group.update(max_iter=max_iter)
        else:
            state["t"] = 0.0  # s = t * d = 0: no curvature pair from a step across objectives
            opt.step(closure)
        loss = float(closure())  # memoized: the loss at the solution, no extra pass
        if not math.isfinite(loss):
            raise InputError(f"linear probe: L-BFGS diverged at weight decay {wd} (loss {loss})")
        fits.append(Fit(float(wd), w.detach().clone(), b.detach().clone(), opt.state[w]["n_iter"] - it0,
                        obj.passes - p0, loss, copy.deepcopy(opt.state_dict())))
        if on_fit is not None:
            on_fit(fits[-1])
    return fits
