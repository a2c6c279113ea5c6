"""Per-feature standardization with statistics from the rows a probe is fit on (never the test rows).

Features are standardized chunk by chunk so a 1.28M-row bank is never copied in float64, and a head fit
in one standardized space can be carried exactly to another (hold-out fit -> refit on all training rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_STAT_CHUNK = 65536


@dataclass(frozen=True)
class Standardizer:
    """Per-feature mean/std (float64 accumulation); constant features keep std 1."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, rows: torch.Tensor | None = None) -> Standardizer:
        """Statistics of x[rows] (all rows if None), without copying x[rows]."""
        n = x.shape[0] if rows is None else rows.shape[0]
        s1 = torch.zeros(x.shape[1], dtype=torch.float64)
        s2 = torch.zeros(x.shape[1], dtype=torch.float64)
        for i in range(0, n, _STAT_CHUNK):
            c = (x[i : i + _STAT_CHUNK] if rows is None else x[rows[i : i + _STAT_CHUNK]]).double()
            s1 += c.sum(0)
            s2 += (c * c).sum(0)
        mean = s1 / n
        std = (s2 / n - mean * mean).clamp_min(0).sqrt()
        std = torch.where(std > 1e-12 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
        return cls(mean.float(), std.float())

    def __call__(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Standardized float32 copy of a (small) block of rows on `device`."""
        x = x.to(device=device, dtype=torch.float32)
        return (x - self.mean.to(device)) / self.std.to(device)

    def transform(self, x: torch.Tensor, dtype: torch.dtype, device: torch.device,
                  rows: torch.Tensor | None = None, chunk: int = 16384) -> torch.Tensor:
        """Standardized copy of x[rows] (all rows if None) in `dtype` on `device`, chunk by chunk."""
        n = x.shape[0] if rows is None else rows.shape[0]
        out = torch.empty(n, x.shape[1], dtype=dtype, device=device)
        for i in range(0, n, chunk):
            block = x[i : i + chunk] if rows is None else x[rows[i : i + chunk]]
            out[i : i + chunk] = self(block, device)
        return out

    def carry(self, to: Standardizer, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(W', b') with (x - to.mean)/to.std @ W' + b' == (x - mean)/std @ W + b for every x."""
        w = weight * (to.std / self.std).to(weight.device)[:, None]
        b = bias + ((to.mean - self.mean) / self.std).to(weight.device) @ weight
        return w, b
