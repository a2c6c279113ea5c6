"""Full-batch L-BFGS for multinomial logistic regression on standardized features.

Why full batch: one pass over the rows is two large matmuls per chunk (logits, then X^T (P - Y)), which
use every core far better than minibatch steps. The objective is mean cross-entropy + wd/2 ||W||^2
(bias unpenalized), i.e. scikit-learn's LogisticRegression with C = 1 / (wd * n).

Precision. "bf16" passes store the standardized rows in bf16 and run both matmuls in bf16: torch's CPU
GEMM accumulates in fp32 but rounds its OUTPUT to bf16, so the logits and each chunk's gradient block
carry bf16 rounding (relative 2^-9); softmax, loss and the sums over chunks are fp32/fp64. That is 6x
faster than fp32 on AMX CPUs (2.1x on avx512_bf16 without AMX) but the result depends on the CPU's bf16
kernels, so bf16 is used only when a pass is big enough to pay (`choose_dtype`); every head is scored in
fp32.

Stopping is scale-free: a candidate is solved when max |gradient| <= rtol * max |gradient at W = 0|
(the data gradient at zero does not depend on the weight decay, so the threshold is the same for every
candidate and every refit), after at least one step (so a warm start that already meets the tolerance
still moves towards its own optimum), or when the line search finds no acceptable step (the precision's
resolution), or at max_iter. A regularization path runs strongest penalty
first, each candidate warm-started from the previous one WITH its curvature pairs: the penalty's Hessian
is wd * I on W, so a pair (s, y) moves exactly to a new weight decay by y += (wd' - wd) * s_W. The
penalty may weigh features (wd/2 sum_k w_k ||W_k||^2: another standardized space's penalty, for the
refit), and pairs move between weights the same way.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from .standardize import Standardizer

PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}
# bf16 only when one pass's logits GEMM (rows x dim x classes multiply-adds) reaches this (2.7e8, e.g.
# 10k rows x 768 x 35 classes): below it an fp32 pass takes milliseconds, so the problem is solved in fp32
# to a tight tolerance and the answer does not depend on the CPU's bf16 kernels.
MIN_BF16_MACS = 2**28


def compute_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise InputError(f"linear probe: precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def choose_dtype(precision: str, rows: int, dim: int, num_classes: int,
                 min_bf16_macs: int = MIN_BF16_MACS) -> torch.dtype:
    """The precision actually used: "bf16" is honoured only when rows * dim * classes >= min_bf16_macs."""
    dtype = compute_dtype(precision)
    if dtype == torch.bfloat16 and rows * dim * num_classes < min_bf16_macs:
        return torch.float32
    return dtype


@dataclass
class LinearHead:
    """A head on standardized features: logits = (x - mean) / std @ W + b, always scored in fp32."""

    scaler: Standardizer
    weight: torch.Tensor
    bias: torch.Tensor

    @torch.no_grad()
    def logits(self, x: torch.Tensor, device: torch.device, chunk: int = 8192) -> torch.Tensor:
        """[N, C] float32 logits on CPU, chunk by chunk, fp32 matmuls (a head's reported scores never use bf16)."""
        w, b = self.weight.to(device=device, dtype=torch.float32), self.bias.to(device=device, dtype=torch.float32)
        return torch.cat([(self.scaler(x[i : i + chunk], device) @ w).add_(b).cpu()
                          for i in range(0, x.shape[0], chunk)])


# Below this, -log p[y] from the softmax loses digits (subnormal p) or is infinite (p = 0): such rows take
# logsumexp(z) - z[y] instead. 2^-100 is far above float32's smallest normal (2^-126).
P_EXACT_BELOW = 2.0**-100


def _cross_entropy_sum(z: torch.Tensor, p: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """sum over rows of -log softmax(z)[y], float64, from the softmax p = softmax(z) already formed.

    Why not log_softmax then exp: that is a second full read and write of the [rows, C] block per pass
    (measured 12.7 -> 7.6 ms per 8192 x 1000 block on 2 cores). -log p[y] is exact to float32 rounding of
    p[y] while p[y] is a normal number; the rows where it is not (confidently wrong predictions) take the
    exact log-sum-exp of their logits.
    """
    pt = p.gather(1, ys)
    small = pt < P_EXACT_BELOW
    out = -pt.log().where(~small, 0.0).sum(dtype=torch.float64)
    if bool(small.any()):
        i = small.view(-1).nonzero().view(-1)
        zi = z[i]
        out += (torch.logsumexp(zi, 1) - zi.gather(1, ys[i]).view(-1)).sum(dtype=torch.float64)
    return out


class Objective:
    """Mean softmax cross-entropy of a linear head on a standardized copy of x[rows], block by block.

    The rows are standardized once into `dtype` (bf16: half the float32 input's size) and kept twice per
    block of `chunk` rows: row-major for the logits X W, and transposed for X^T (P - Y) (a GEMM whose A is
    a transposed view runs 1.6x slower on CPU; memory: two bf16 copies = one float32 copy of x[rows]).
    `extend` appends more rows standardized with the same statistics (the refit adds the hold-out rows to
    the rows the path was solved on, without standardizing those again). Workspaces are allocated once, so
    a pass allocates nothing large. Softmax may run on sub-chunks of `sub` rows (fp32 blocks that stay in
    cache: faster on an idle CPU, but each kernel is a parallel region whose barrier costs a time slice on a
    shared one, so by default sub = chunk). The last (loss, gradient) is memoized on (W, b); `seed` gives
    the data term of the first blocks at a point, so a pass there reads only the blocks after them.
    `passes` counts passes over the rows (a pass over some blocks counts their share of the rows; W = 0
    needs none: class sums, given as `class_sums` of the standardized rows or computed from them).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, scaler: Standardizer, *,
                 rows: torch.Tensor | None = None, dtype: torch.dtype, device: torch.device,
                 chunk: int = 8192, sub: int = 8192, class_sums: torch.Tensor | None = None) -> None:
        self.num_classes, self.dtype, self.device = num_classes, dtype, device
        self.dim = x.shape[1]
        self.chunk = max(1, chunk)
        self.sub = max(1, min(sub, self.chunk))
        self.blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (rows, rows^T, labels)
        self.n = 0
        self.passes = 0.0
        self._memo: tuple | None = None
        self._seed: tuple | None = None
        self._class_sums: torch.Tensor | None = None
        self._g0: float | None = None
        self._work: tuple | None = None
        self.extend(scaler.transform(x, dtype, device, rows=rows), y if rows is None else y[rows], class_sums)

    def extend(self, xs: torch.Tensor, y: torch.Tensor, class_sums: torch.Tensor | None = None) -> None:
        """Append rows already standardized with this objective's statistics, in its dtype (`class_sums`:
        theirs per class, [C, D], if known; else computed when the gradient at W = 0 is needed)."""
        if xs.dtype != self.dtype or xs.shape[1] != self.dim or xs.shape[0] != y.shape[0]:
            raise ValueError(f"extend: rows {tuple(xs.shape)} {xs.dtype}, labels {tuple(y.shape)}")
        if self.n == 0:
            self._class_sums = class_sums
        elif self._class_sums is not None and class_sums is not None:
            self._class_sums = self._class_sums.to(self.device, torch.float32) + class_sums.to(self.device)
        else:
            self._class_sums = None
        xs, y = xs.to(self.device), y.to(self.device)
        self.y = y if self.n == 0 else torch.cat([self.y, y])
        for i in range(0, xs.shape[0], self.chunk):
            block = xs[i : i + self.chunk]
            self.blocks.append((block, block.T.contiguous(), y[i : i + self.chunk]))
        self.n += xs.shape[0]
        self._memo = self._seed = self._g0 = self._work = None

    def seed(self, w: torch.Tensor, b: torch.Tensor, data: tuple[float, torch.Tensor, torch.Tensor],
             rows: int) -> None:
        """`data` = (mean loss, mean gradient in W, in b) of the first `rows` rows at (w, b), as data_term
        returned it before `extend`: a pass at exactly (w, b) then reads only the blocks after them."""
        ends = list(itertools.accumulate(xb.shape[0] for xb, _, _ in self.blocks))
        if rows not in ends:
            raise ValueError(f"seed: {rows} rows is not a whole number of blocks")
        loss, gw, gb = data
        self._seed = (w.detach().clone(), b.detach().clone(), ends.index(rows) + 1, rows, loss * rows, gw * rows,
                      gb * rows)

    @property
    def grad_scale(self) -> float:
        """max |data gradient| at W = 0, b = 0: the scale the stopping tolerance is relative to."""
        if self._g0 is None:
            _, gw, gb = self._at_zero(torch.zeros(self.num_classes, device=self.device))
            self._g0 = max(float(gw.abs().max()), float(gb.abs().max()), 1e-30)
        return self._g0

    def data_term(self, w: torch.Tensor, b: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
        """(mean cross-entropy, its gradient in W [D, C], in b [C]) at float32 (W, b)."""
        if self.memoized(w, b):
            return self._memo[2:]
        with torch.no_grad():
            if not bool(w.any()):
                out = self._at_zero(b)
            elif (sd := self._seed) is not None and torch.equal(sd[0], w) and torch.equal(sd[1], b):
                loss, gw, gb = self._pass(w, b, first=sd[2])  # sums over the blocks after the seeded ones
                out = ((loss + sd[4]) / self.n, gw.add_(sd[5]).div_(self.n), gb.add_(sd[6]).div_(self.n))
            else:
                loss, gw, gb = self._pass(w, b)
                out = (loss / self.n, gw.div_(self.n), gb.div_(self.n))
        self._memo = (w.detach().clone(), b.detach().clone(), *out)
        return out

    def memoized(self, w: torch.Tensor, b: torch.Tensor) -> bool:
        """Whether the data term at (w, b) is known without a pass."""
        m = self._memo
        return m is not None and torch.equal(m[0], w) and torch.equal(m[1], b)

    def _at_zero(self, b: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
        """W = 0: every row predicts softmax(b), so class sums give the exact loss and gradient."""
        if self._class_sums is None:
            sums = torch.zeros(self.num_classes, self.dim, device=self.device)
            for xb, _, yb in self.blocks:
                sums.index_add_(0, yb, xb.float())
            self._class_sums = sums
        sums, n = self._class_sums.to(self.device, torch.float32), self.n
        prior = torch.bincount(self.y, minlength=self.num_classes).float() / n
        lp = torch.log_softmax(b.float(), 0)
        p = lp.exp()
        loss = -float((prior.double() * lp.double()).sum())
        gw = (sums.sum(0) / n)[:, None] * p[None, :] - sums.T / n
        return loss, gw.contiguous(), p - prior

    def _workspace(self) -> tuple:
        if self._work is None:
            k = max(xb.shape[0] for xb, _, _ in self.blocks)
            s, c, dev = min(self.sub, k), self.num_classes, self.device
            self._work = (torch.empty(k, c, dtype=self.dtype, device=dev),  # logits, then P - Y, of a block
                          torch.empty(s, c, device=dev), torch.empty(s, c, device=dev),  # fp32 sub-block
                          torch.empty(self.dim, c, dtype=self.dtype, device=dev),  # a block's gradient
                          torch.full((s, 1), -1.0, device=dev))
        return self._work

    def _pass(self, w: torch.Tensor, b: torch.Tensor, first: int = 0) -> tuple[float, torch.Tensor, torch.Tensor]:
        """SUMS over the blocks from `first` on: (loss, gradient in W, in b)."""
        low = self.dtype != torch.float32
        zbuf, zf, lsm, gw_part, minus_one = self._workspace()
        gw = torch.zeros(self.dim, self.num_classes, device=self.device)
        gb = torch.zeros(self.num_classes, device=self.device)
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        wc, b = w.detach().to(self.dtype), b.detach().float()
        for xc, xt, yc in self.blocks[first:]:
            self.passes += xc.shape[0] / self.n
            zl = torch.matmul(xc, wc, out=zbuf[: xc.shape[0]])  # bf16: the logits are rounded here
            for s in range(0, xc.shape[0], self.sub):
                zs = zl[s : s + self.sub]
                r = zs.shape[0]
                ys = yc[s : s + r, None]
                z = zf[:r].copy_(zs).add_(b)  # fp32; copy then add: 3x faster than a mixed-dtype add
                p = torch.softmax(z, 1, out=lsm[:r])  # one fused kernel; z is kept for the rare exact rows
                loss += _cross_entropy_sum(z, p, ys)
                p.scatter_add_(1, ys, minus_one[:r])  # softmax - one-hot
                gb += p.sum(0)
                zs.copy_(p)  # bf16: P - Y rounded here, as the GEMM's input
            if low:  # the block's gradient comes out of the GEMM in bf16, summed in fp32
                gw += torch.matmul(xt, zl, out=gw_part)
            else:
                gw.addmm_(xt, zl)
        return float(loss), gw, gb

    def penalized(self, theta: torch.Tensor, wd: float,
                  weights: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
        """(loss + wd/2 sum_k weights_k ||W_k||^2, flat gradient) at flat theta = [W.ravel(), b]; `weights`
        (per feature, [D]; None: all 1) put the penalty of another standardized space on this one's W."""
        dc = self.dim * self.num_classes
        w, b = theta[:dc].view(self.dim, self.num_classes), theta[dc:]
        loss, gw, gb = self.data_term(w, b)
        pw = w if weights is None else w * weights.to(w)[:, None]  # d/dW of the penalty, / wd
        g = torch.cat([gw.reshape(-1) + wd * pw.reshape(-1), gb])
        return loss + 0.5 * wd * float((w * pw).sum(dtype=torch.float64)), g


@dataclass
class Memory:
    """L-BFGS curvature pairs (s, y) of the penalized objective at weight decay `wd` (with per-entry penalty
    weights `weights` on W, flat; None: all 1); flat vectors, with each pair's s'y and y'y kept (computed
    once, not at every direction)."""

    wd: float
    n_weight: int  # the first n_weight entries of theta are W (penalized); the rest is b
    weights: torch.Tensor | None = None
    s: list[torch.Tensor] = field(default_factory=list)
    y: list[torch.Tensor] = field(default_factory=list)
    sy: list[float] = field(default_factory=list)
    yy: list[float] = field(default_factory=list)

    def _diag(self) -> torch.Tensor | float:
        return self.wd if self.weights is None else self.wd * self.weights

    def at(self, wd: float, weights: torch.Tensor | None = None) -> Memory:
        """The same pairs for weight decay wd (and penalty weights): exact, since the penalty's Hessian is
        the diagonal wd * weights on W and 0 on b, whatever the data term."""
        out = Memory(wd, self.n_weight, weights)
        shift = out._diag() - self._diag()
        for s, y in zip(self.s, self.y, strict=True):
            y = y.clone()
            y[: self.n_weight] += shift * s[: self.n_weight]
            sy = float(s @ y)
            if sy > 0:
                out.s.append(s)
                out.y.append(y)
                out.sy.append(sy)
                out.yy.append(float(y @ y))
        return out

    def push(self, s: torch.Tensor, y: torch.Tensor, history: int) -> None:
        sy, yy = float(s @ y), float(y @ y)
        if sy > 1e-12 * yy:  # curvature condition; always true for wd > 0 in exact math
            for lst, v in ((self.s, s), (self.y, y), (self.sy, sy), (self.yy, yy)):
                lst.append(v)
                del lst[:-history]

    def direction(self, g: torch.Tensor, h0: float) -> torch.Tensor:
        """-H g by the two-loop recursion; H0 = gamma I (gamma = s'y / y'y of the newest pair, else 1/h0)."""
        q, alphas = g.clone(), []
        rhos = [1.0 / sy for sy in self.sy]
        for s, y, rho in zip(reversed(self.s), reversed(self.y), reversed(rhos), strict=True):
            a = rho * float(s @ q)
            q.add_(y, alpha=-a)
            alphas.append(a)
        q.mul_(self.sy[-1] / self.yy[-1] if self.s else 1.0 / h0)
        for s, y, rho, a in zip(self.s, self.y, rhos, reversed(alphas), strict=True):
            q.add_(s, alpha=a - rho * float(y @ q))
        return q.neg_()


@dataclass
class Fit:
    """One solution on the path, with its cost, final gradient and curvature memory (to warm-start a refit)."""

    weight_decay: float
    weight: torch.Tensor
    bias: torch.Tensor
    iterations: int
    passes: float  # passes over the rows (a pass over the added rows only counts their share)
    loss: float
    grad_max: float  # max |gradient| of the penalized objective at the solution
    grad_rel: float  # grad_max / grad_scale
    grad_scale: float  # max |gradient at W = 0| of this objective: what the tolerance is relative to
    stop: str  # "gtol", "line_search" or "max_iter"
    memory: Memory | None = None
    data: tuple[float, torch.Tensor, torch.Tensor] | None = None  # (mean loss, gradient in W, in b) of the data term


# Hager-Zhang approximate Wolfe conditions: sigma phi'(0) <= phi'(t) <= (2 delta - 1) phi'(0).
DELTA, SIGMA = 0.1, 0.9


def _secant(lo: tuple[float, float], hi: tuple[float, float] | None, gd: float) -> float:
    """Next trial step: the root of phi' by secant between (t, phi'(t)) pairs, bisection as a guard."""
    (a, da) = lo
    if hi is None:  # still descending steeply at t = a: extrapolate through (0, phi'(0)), 2x to 10x
        t = -gd * a / (da - gd) if da > gd else 10.0 * a
        return min(max(t, 2.0 * a), 10.0 * a)
    (b, db) = hi
    t = a - da * (b - a) / (db - da) if math.isfinite(db) and db > da else 0.5 * (a + b)
    return t if a + 0.01 * (b - a) <= t <= b - 0.01 * (b - a) else 0.5 * (a + b)


def lbfgs(obj: Objective, w: torch.Tensor, b: torch.Tensor, wds: Sequence[float], *, rtol: float,
          max_iter: int, history: int = 10, max_ls: int = 6, memory: Memory | None = None,
          weights: torch.Tensor | None = None, on_fit: Callable[[Fit], None] | None = None) -> list[Fit]:
    """Solve for each weight decay in order, each warm-started from the previous solution and its pairs.

    Line search on phi'(t) = g(theta + t d)'d alone, by secant from the unit step, accepting Hager and
    Zhang's approximate Wolfe conditions: in bf16 the loss carries rounding noise larger than the
    decrease near the optimum (Armijo then rejects good steps), the directional derivative does not;
    convexity makes phi' increasing, so phi'(t) <= 0.8 |phi'(0)| still bounds the loss from above for a
    near-quadratic phi. Without pairs the first step is -g / h, h = 1/C + wd: at uniform predictions the
    cross-entropy's curvature is ~1/C per unit of standardized feature variance, so from W = 0 that is
    the class-mean classifier at the Newton scale. `weights` ([D], None: all 1) weigh the penalty per
    feature: wd/2 sum_k weights_k ||W_k||^2.
    """
    dc = obj.dim * obj.num_classes
    theta = torch.cat([w.detach().reshape(-1).float(), b.detach().float()]).to(obj.device)
    gtol = rtol * obj.grad_scale
    mem = memory
    flat = None if weights is None else weights.float().to(obj.device).repeat_interleave(obj.num_classes)
    fits = []
    for wd in (float(v) for v in wds):
        mem = Memory(wd, dc, flat) if mem is None else mem.at(wd, flat)
        p0, h0 = obj.passes, 1.0 / obj.num_classes + wd
        f, g = obj.penalized(theta, wd, weights)
        it, stop, t_prev = 0, "max_iter", 1.0
        while it < max_iter:
            # At least one step per candidate: a warm start within the tolerance of its new objective
            # would otherwise be taken as is, and the path would compare near-copies of one model. With
            # the exactly shifted pairs that one step is close to the Newton step to the new optimum.
            gmax = float(g.abs().max())
            if gmax == 0 or (it > 0 and gmax <= gtol):
                stop = "gtol"
                break
            d = mem.direction(g, h0)
            gd = float(g @ d)
            if not gd < 0:  # not a descent direction (rounding): restart from steepest descent
                mem = Memory(wd, dc, flat)
                d = g / -h0
                gd = float(g @ d)
            # Far from the optimum the softmax saturates along d and the unit step overshoots ~10x, step
            # after step: start from twice the last accepted step instead (one pass instead of two).
            t, accepted, lo, hi = min(1.0, 2.0 * t_prev), False, (0.0, gd), None
            for _ in range(max_ls):
                f_new, g_new = obj.penalized(theta + t * d, wd, weights)
                dd = float(g_new @ d)  # phi'(t), increasing in t: the problem is convex
                if math.isfinite(f_new) and SIGMA * gd <= dd <= (2 * DELTA - 1) * gd:
                    accepted = True
                    break
                if not math.isfinite(f_new) or dd > 0:
                    hi = (t, dd if math.isfinite(f_new) else math.inf)
                else:
                    lo = (t, dd)
                t = _secant(lo, hi, gd)
            if not accepted:
                stop = "line_search"
                break
            it, t_prev = it + 1, t
            s = t * d
            mem.push(s, g_new - g, history)
            theta.add_(s)
            f, g = f_new, g_new
        if not math.isfinite(f):
            raise InputError(f"linear probe: L-BFGS diverged at weight decay {wd} (loss {f})")
        gmax = float(g.abs().max())
        if stop == "max_iter" and gmax <= gtol:
            stop = "gtol"
        fw, fb = theta[:dc].view(obj.dim, obj.num_classes).clone(), theta[dc:].clone()
        fits.append(Fit(wd, fw, fb, it, round(obj.passes - p0, 4), f, gmax, gmax / obj.grad_scale, obj.grad_scale,
                        stop, mem, obj.data_term(fw, fb) if obj.memoized(fw, fb) else None))
        if on_fit is not None:
            on_fit(fits[-1])
    return fits
