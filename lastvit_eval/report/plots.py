"""Figures from arrays only (no model, no dataset): heatmap grids, fg/bg score distributions, vote maps.

Rendering goes through matplotlib's Agg canvas on a bare `Figure`, never through pyplot: no global
backend switch, no GUI, safe in worker threads. Sizes are fixed (inches x dpi, no tight bbox), so the PNG's
pixel size depends only on the number of panels: `PANEL_INCHES * DPI` pixels per panel side.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .outdir import ensure_writable_dir
from .write import atomic_write_bytes

DPI = 100
PANEL_INCHES = 2.5  # one grid panel: 250 x 250 pixels
DIST_INCHES = (6.0, 4.0)  # the distribution plot: 600 x 400 pixels


def grid_shape(n: int, ncols: int = 4) -> tuple[int, int]:
    """(rows, cols) of a grid holding n panels, at most ncols wide."""
    if n < 1:
        raise ValueError("need at least one panel")
    cols = min(n, ncols)
    return math.ceil(n / cols), cols


def grid_pixels(n: int, ncols: int = 4) -> tuple[int, int]:
    """(width, height) in pixels of the PNG a grid function writes for n panels."""
    rows, cols = grid_shape(n, ncols)
    side = round(PANEL_INCHES * DPI)
    return cols * side, rows * side


def _grid_figure(n: int, ncols: int, wspace: float = 0.08, right: float = 0.98) -> tuple[Figure, list]:
    rows, cols = grid_shape(n, ncols)
    fig = Figure(figsize=(cols * PANEL_INCHES, rows * PANEL_INCHES), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.02, right=right, bottom=0.02, top=0.90, wspace=wspace, hspace=0.18)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(rows * cols)]
    for ax in axes:
        ax.set_axis_off()
    return fig, axes


def _save(fig: Figure, path: str | Path) -> Path:
    """Render in memory, then write atomically: a full disk leaves no half PNG and no temp file."""
    path = Path(path)
    ensure_writable_dir(path.parent)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _check_grid(name: str, grid: np.ndarray) -> np.ndarray:
    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 2:
        raise ValueError(f"{name} must be a 2-D patch grid, got shape {grid.shape}")
    return grid


def heatmap_grid(
    images: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    path: str | Path,
    top_patches: Sequence[tuple[int, int]] | None = None,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    alpha: float = 0.5,
) -> Path:
    """Per image: the crop, its patch-score heatmap on top, ground-truth boxes (green), top patch (red).

    images: uint8 HxWx3 crops; scores: h x w patch grids; boxes: per image an (m, 4) array of
    x0, y0, x1, y1 in crop pixels; top_patches: (row, col) per image, default the arg-max of its scores.
    """
    n = len(images)
    if not (len(scores) == len(boxes) == n) or (top_patches is not None and len(top_patches) != n):
        raise ValueError("images, scores, boxes (and top_patches) must have one entry per image")
    fig, axes = _grid_figure(n, ncols)
    for i in range(n):
        img = np.asarray(images[i])
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"image {i} must be uint8 HxWx3, got {img.dtype} {img.shape}")
        grid = _check_grid(f"scores[{i}]", scores[i])
        H, W = img.shape[:2]
        gh, gw = grid.shape
        ax = axes[i]
        ax.imshow(img, extent=(0, W, H, 0), interpolation="bilinear")
        ax.imshow(grid, extent=(0, W, H, 0), cmap="jet", alpha=alpha, interpolation="nearest")
        for x0, y0, x1, y1 in np.asarray(boxes[i], dtype=float).reshape(-1, 4):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.5))
        r, c = top_patches[i] if top_patches is not None else np.unravel_index(np.nanargmax(grid), grid.shape)
        ph, pw = H / gh, W / gw
        ax.add_patch(Rectangle((c * pw, r * ph), pw, ph, fill=False, edgecolor="red", linewidth=2.0))
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    return _save(fig, path)


def score_distribution(
    scores: np.ndarray, fg_mask: np.ndarray, path: str | Path, bins: int = 50, title: str | None = None
) -> Path:
    """Histograms (densities) of patch scores inside vs outside the object: how well scores separate them."""
    scores = np.asarray(scores, dtype=float).ravel()
    fg = np.asarray(fg_mask, dtype=bool).ravel()
    if scores.shape != fg.shape:
        raise ValueError(f"scores ({scores.size}) and fg_mask ({fg.size}) must hold as many patches")
    finite = np.isfinite(scores)
    scores, fg = scores[finite], fg[finite]
    fig = Figure(figsize=DIST_INCHES, dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.90)
    ax = fig.add_subplot(1, 1, 1)
    edges = np.histogram_bin_edges(scores, bins=bins) if scores.size else np.linspace(0, 1, bins + 1)
    for sel, label, color in ((fg, "foreground", "tab:orange"), (~fg, "background", "tab:blue")):
        vals = scores[sel]
        if vals.size:
            ax.hist(vals, bins=edges, density=True, histtype="stepfilled", alpha=0.45, color=color,
                    label=f"{label} (n={vals.size}, mean={vals.mean():.3f})")
    ax.set_xlabel("patch score")
    ax.set_ylabel("density")
    if scores.size:
        ax.legend(fontsize=8)
    ax.set_title(title or "patch scores: foreground vs background", fontsize=10)
    return _save(fig, path)


def vote_map_grid(
    votes: Sequence[np.ndarray],
    path: str | Path,
    images: Sequence[np.ndarray] | None = None,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
) -> Path:
    """LAST vote counts per patch (channels that picked it), one panel per image, over the crop if given."""
    n = len(votes)
    if images is not None and len(images) != n:
        raise ValueError("images must have one entry per vote map")
    fig, axes = _grid_figure(n, ncols, wspace=0.3, right=0.95)  # room for each panel's colorbar ticks
    for i in range(n):
        grid = _check_grid(f"votes[{i}]", votes[i])
        ax = axes[i]
        if images is not None:
            img = np.asarray(images[i])
            H, W = img.shape[:2]
            ax.imshow(img, extent=(0, W, H, 0), interpolation="bilinear")
            im = ax.imshow(grid, extent=(0, W, H, 0), cmap="viridis", alpha=0.6, interpolation="nearest")
        else:
            im = ax.imshow(grid, cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        ax.set_title(str(titles[i]) if titles is not None else f"max {int(grid.max())} votes", fontsize=8)
    return _save(fig, path)
