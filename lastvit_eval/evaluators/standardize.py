"""Per-feature standardization with statistics from the rows a probe is fit on (never the test rows).

Features are standardized chunk by chunk so a 1.28M-row bank is never copied in float64, and a head fit
in one standardized space can be carried exactly to another (hold-out fit -> refit on all training rows).
Statistics are kept as moments (count, mean, centred sum of squares) so those of two disjoint row sets
combine exactly into those of their union (Chan, Golub & LeVeque 1979, "Updating formulae and a pairwise
algorithm for computing sample variances"): the refit's statistics come from the hold-out split's two
parts without reading the rows again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_STAT_CHUNK = 8192


@dataclass(frozen=True)
class Moments:
    """Count, per-feature mean and centred sum of squares (float64) of some rows; optionally the per-class
    sums of those rows (raw features, [C, D] float64) and class counts, for the gradient at W = 0."""

    n: int
    mean: torch.Tensor
    m2: torch.Tensor
    class_sums: torch.Tensor | None = None
    class_counts: torch.Tensor | None = None

    @classmethod
    def of(cls, x: torch.Tensor, rows: torch.Tensor | None = None, labels: torch.Tensor | None = None,
           num_classes: int = 0) -> Moments:
        """Moments of x[rows] (all rows if None), without copying x[rows]: fp32 mean/variance per chunk
        (each a two-pass-accurate reduction), chunks combined in float64. With `labels` (of all rows of x),
        also the class sums of x[rows]."""
        n = x.shape[0] if rows is None else rows.shape[0]
        out = cls(0, torch.zeros(x.shape[1], dtype=torch.float64), torch.zeros(x.shape[1], dtype=torch.float64))
        sums = None if labels is None else torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
        part = None if labels is None else torch.empty(num_classes, x.shape[1])
        for i in range(0, n, _STAT_CHUNK):
            c = x[i : i + _STAT_CHUNK] if rows is None else x[rows[i : i + _STAT_CHUNK]]
            c = c.float()
            var, mean = torch.var_mean(c, 0, correction=0)
            out = out + cls(c.shape[0], mean.double(), var.double() * c.shape[0])
            if sums is not None:  # sums of centred rows in fp32 (no cancellation when |mean| >> std)
                yc = labels[i : i + _STAT_CHUNK] if rows is None else labels[rows[i : i + _STAT_CHUNK]]
                part.zero_().index_add_(0, yc, c - mean)
                counts = torch.bincount(yc, minlength=num_classes).double()
                sums += part.double().addr_(counts, mean.double())
        if sums is None:
            return out
        counts = torch.bincount(labels if rows is None else labels[rows], minlength=num_classes)
        return cls(out.n, out.mean, out.m2, sums, counts)

    def __add__(self, other: Moments) -> Moments:
        """Moments of the union of two disjoint row sets (Chan et al.'s pairwise update)."""
        n = self.n + other.n
        if self.n == 0 or other.n == 0:
            return other if self.n == 0 else self
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + delta * delta * (self.n * other.n / n)
        if self.class_sums is None or other.class_sums is None:
            return Moments(n, mean, m2)
        return Moments(n, mean, m2, self.class_sums + other.class_sums, self.class_counts + other.class_counts)

    def standardizer(self) -> Standardizer:
        std = (self.m2 / max(self.n, 1)).clamp_min(0).sqrt()  # population std, as scikit-learn's StandardScaler
        std = torch.where(std > 1e-12 * self.mean.abs().clamp_min(1.0), std, torch.ones_like(std))
        return Standardizer(self.mean.float(), std.float())

    def standardized_class_sums(self, scaler: Standardizer) -> torch.Tensor:
        """[C, D] float32 sums per class of the standardized rows: (sum x - n_c mean) / std."""
        s = self.class_sums - self.class_counts.double()[:, None] * scaler.mean.double()
        return (s / scaler.std.double()).float()


@dataclass(frozen=True)
class Standardizer:
    """Per-feature mean/std (float64 accumulation); constant features keep std 1."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, rows: torch.Tensor | None = None) -> Standardizer:
        """Statistics of x[rows] (all rows if None), without copying x[rows]."""
        return Moments.of(x, rows).standardizer()

    def __call__(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Standardized float32 copy of a (small) block of rows on `device`."""
        x = x.to(device=device, dtype=torch.float32)
        return (x - self.mean.to(device)) / self.std.to(device)

    def transform(self, x: torch.Tensor, dtype: torch.dtype, device: torch.device,
                  rows: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
        """Standardized copy of x[rows] (all rows if None) in `dtype` on `device`, chunk by chunk through
        one float32 buffer (no temporaries per chunk)."""
        n = x.shape[0] if rows is None else rows.shape[0]
        out = torch.empty(n, x.shape[1], dtype=dtype, device=device)
        buf = torch.empty(min(chunk, n), x.shape[1], device=device)
        mean, std = self.mean.to(device), self.std.to(device)
        for i in range(0, n, chunk):
            block = x[i : i + chunk] if rows is None else x[rows[i : i + chunk]]
            b = buf[: block.shape[0]]
            torch.sub(block.to(device=device, dtype=torch.float32), mean, out=b)
            out[i : i + chunk] = b.div_(std)
        return out

    def carry(self, to: Standardizer, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(W', b') with (x - to.mean)/to.std @ W' + b' == (x - mean)/std @ W + b for every x."""
        w = weight * (to.std / self.std).to(weight.device)[:, None]
        b = bias + ((to.mean - self.mean) / self.std).to(weight.device) @ weight
        return w, b
