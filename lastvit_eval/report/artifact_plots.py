"""Pictures of high-norm artifact tokens: a norm histogram and per-image outlier maps (arrays in, PNG out).

Drawn like `plots.py` (a bare Agg `Figure`, fixed sizes, atomic writes) and with its grid helpers.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .plots import CMAP, DIST_INCHES, DPI, TOP_COLOUR, _footer, _grid_figure, _own_range, _save


def norm_histogram(patch_values: np.ndarray, path: str | Path, threshold: float, xlabel: str,
                   prefix_values: dict[str, np.ndarray] | None = None, title: str | None = None,
                   bins: int = 60) -> Path:
    """Histogram of every patch token's norm over all images (log count: the outliers are a few percent),
    the outlier threshold as a dashed line, CLS and register tokens in their own colours when given."""
    values = np.asarray(patch_values, dtype=float).ravel()
    values = values[np.isfinite(values)]
    extra = {k: np.asarray(v, dtype=float).ravel() for k, v in (prefix_values or {}).items() if np.size(v)}
    fig = Figure(figsize=DIST_INCHES, dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.88)
    ax = fig.add_subplot(1, 1, 1)
    every = np.concatenate([values, *extra.values(), [threshold]]) if values.size else np.array([0.0, threshold])
    edges = np.histogram_bin_edges(every, bins=bins)
    above = int((values > threshold).sum())
    ax.hist(values, bins=edges, color="tab:blue", alpha=0.6, log=True,
            label=f"patch tokens (n={values.size}, {above} above the threshold)")
    for (name, v), colour in zip(extra.items(), ("tab:orange", "tab:green", "tab:purple"), strict=False):
        ax.hist(v, bins=edges, color=colour, alpha=0.7, log=True, histtype="step", linewidth=1.5,
                label=f"{name} (n={v.size}, median {np.median(v):.3g})")
    ax.axvline(threshold, color=TOP_COLOUR, linestyle="--", linewidth=1.2, label=f"outlier threshold {threshold:.3g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("tokens (log scale)")
    ax.legend(fontsize=7)
    ax.set_title("\n".join(textwrap.wrap(title or "token norms", width=80)), fontsize=9)
    return _save(fig, path)


def outlier_maps(images: Sequence[np.ndarray], norms: Sequence[np.ndarray], outliers: Sequence[np.ndarray],
                 path: str | Path, titles: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Per image, one row of three panels: the crop the model saw, its patch-norm map (each image on its
    own range), and the crop with the outlier patches outlined."""
    n = len(images)
    if not (len(norms) == len(outliers) == n) or n == 0:
        raise ValueError("images, norms and outliers must have one entry per image (at least one)")
    fig, axes, size = _grid_figure(3 * n, 3, title)
    for i in range(n):
        img = np.asarray(images[i])
        grid = np.asarray(norms[i], dtype=float)
        out = np.asarray(outliers[i], dtype=bool)
        if grid.ndim != 2 or out.shape != grid.shape:
            raise ValueError(f"norms[{i}] and outliers[{i}] must be the same 2-D patch grid")
        H, W = img.shape[:2]
        gh, gw = grid.shape
        a_img, a_norm, a_out = axes[3 * i: 3 * i + 3]
        a_img.imshow(img, extent=(0, W, H, 0), interpolation="bilinear")
        a_img.set_title(str(titles[i]) if titles is not None else "", fontsize=8, pad=3)
        a_norm.imshow(grid, extent=(0, W, H, 0), cmap=CMAP, norm=_own_range(grid), interpolation="nearest")
        a_norm.set_title(f"patch norms {np.nanmin(grid):.3g} .. {np.nanmax(grid):.3g}", fontsize=8, pad=3)
        a_out.imshow(img, extent=(0, W, H, 0), interpolation="bilinear", alpha=0.6)
        ph, pw = H / gh, W / gw
        for r, c in zip(*np.nonzero(out), strict=True):
            a_out.add_patch(Rectangle((c * pw, r * ph), pw, ph, fill=False, edgecolor=TOP_COLOUR, linewidth=1.5))
        a_out.set_title(f"{int(out.sum())} outlier patch(es) of {out.size}", fontsize=8, pad=3)
        for ax in (a_img, a_norm, a_out):
            ax.set_xlim(0, W)
            ax.set_ylim(H, 0)
    handles = [Patch(facecolor="none", edgecolor=TOP_COLOUR, linewidth=1.5, label="high-norm outlier patch")]
    _footer(fig, size, ScalarMappable(Normalize(0.0, 1.0), CMAP),
            "middle column: the norm of each patch token after the last block, scaled per image "
            "(0 = its lowest patch, 1 = its highest)", handles)
    return _save(fig, path)
