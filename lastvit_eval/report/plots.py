"""Figures from arrays only (no model, no dataset): heatmap grids, fg/bg score distributions, vote maps.

Rendering goes through matplotlib's Agg canvas on a bare `Figure`, never through pyplot: no global
backend switch, no GUI, safe in worker threads. Sizes are fixed (inches x dpi, no tight bbox), so the PNG's
pixel size depends only on the number of panels: `PANEL_INCHES * DPI` pixels per panel side.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .outdir import ensure_writable_dir
from .write import atomic_write_bytes

DPI = 100
PANEL_INCHES = 2.5  # one grid panel: 250 x 250 pixels
HEADER_INCHES = 0.55  # grid figures: the title (what is shown, which model) above the panels
NARROW_INCHES = 7.0  # grid figures narrower than this stack legend and colour bar
DIST_INCHES = (6.0, 4.0)  # the distribution plot: 600 x 400 pixels
CMAP = "magma"  # perceptual, dark-to-bright: lime boxes and red top patches stay visible on it
BOX_COLOUR, TOP_COLOUR = "lime", "red"
HIT_COLOUR, MISS_COLOUR = "#1b7f3b", "#c62828"


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
    return cols * side, rows * side + round((HEADER_INCHES + _footer_inches(cols * PANEL_INCHES)) * DPI)


def _footer_inches(width: float) -> float:
    """The band under the panels: colour bar, legend, two to five lines saying what the colours mean."""
    return 0.9 if width >= NARROW_INCHES else 1.6


def _grid_figure(n: int, ncols: int, title: str | None) -> tuple[Figure, list, tuple[float, float]]:
    """A figure of panels (an image axis each, room above it for a two-line title), a header for the
    figure's title and a footer for the colour bar and legend. Returns the figure, the axes and the
    figure size in inches."""
    rows, cols = grid_shape(n, ncols)
    fw = cols * PANEL_INCHES
    fh = rows * PANEL_INCHES + HEADER_INCHES + _footer_inches(fw)
    fig = Figure(figsize=(fw, fh), dpi=DPI)
    FigureCanvasAgg(fig)
    side, top_room = 2.0, 0.38  # image side and title room inside a panel, inches
    axes = []
    for i in range(n):
        r, c = divmod(i, cols)
        x0 = c * PANEL_INCHES + (PANEL_INCHES - side) / 2
        y0 = fh - HEADER_INCHES - (r + 1) * PANEL_INCHES + (PANEL_INCHES - side - top_room) / 2
        ax = fig.add_axes((x0 / fw, y0 / fh, side / fw, side / fh))
        ax.set_axis_off()
        axes.append(ax)
    if title:
        lines = [w for part in title.split("\n") for w in textwrap.wrap(part, width=int(fw * 14))]
        fig.text(0.5, 1 - 0.06 / fh, "\n".join(lines[:3]), ha="center", va="top", fontsize=9)
    return fig, axes, (fw, fh)


def _footer(fig: Figure, size: tuple[float, float], mappable, label: str, handles: list) -> None:
    """Under the panels, bottom up: what the colours mean (text), the legend of the outlines (right of the
    colour bar on wide figures, under it on narrow ones), the colour bar."""
    fw, fh = size
    lines = textwrap.wrap(label, width=int((fw - 0.4) * 15))
    fig.text(0.2 / fw, 0.05 / fh, "\n".join(lines), ha="left", va="bottom", fontsize=8)
    y = 0.05 + 0.135 * len(lines) + 0.05
    wide = fw >= NARROW_INCHES
    if handles and not wide:
        fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.15 / fw, y / fh), fontsize=8, frameon=False,
                   ncol=1, handlelength=1.5, borderaxespad=0)
        y += 0.2 * len(handles) + 0.05
    bar_w = min(3.2, fw * 0.4) if wide else fw - 0.5
    cax = fig.add_axes((0.25 / fw, (y + 0.17) / fh, bar_w / fw, 0.12 / fh))
    cb = fig.colorbar(mappable, cax=cax, orientation="horizontal")
    cb.ax.tick_params(labelsize=7, pad=1)
    if handles and wide:
        fig.legend(handles=handles, loc="center right", bbox_to_anchor=(1 - 0.1 / fw, (y + 0.2) / fh), fontsize=8,
                   frameon=False, ncol=len(handles), handlelength=1.5, borderaxespad=0)


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
    alpha: float = 0.45,
    hits: Sequence[bool] | None = None,
    title: str | None = None,
    score_label: str = "patch score",
) -> Path:
    """Per image: the crop, its patch scores blended on top (each image on its own range, so the picture
    shows where inside the image the model looks; the colour bar says so), ground-truth boxes (lime), the top patch (red); the panel title says hit or miss and
    the top score. The legend names the outlines, so the picture reads without the README.

    images: uint8 HxWx3 crops; scores: h x w patch grids; boxes: per image an (m, 4) array of
    x0, y0, x1, y1 in crop pixels; top_patches: (row, col) per image, default the arg-max of its scores;
    hits: per image whether the top patch counts as inside the object (the caller's hit rule).
    """
    n = len(images)
    if not (len(scores) == len(boxes) == n) or any(v is not None and len(v) != n for v in (top_patches, hits)):
        raise ValueError("images, scores, boxes (and top_patches, hits) must have one entry per image")
    grids = [_check_grid(f"scores[{i}]", scores[i]) for i in range(n)]
    if hits is not None and title:
        title = f"{title}\nhit: top patch inside the box in {int(np.sum(hits))} of {n} images shown"
    fig, axes, size = _grid_figure(n, ncols, title)
    for i in range(n):
        img = np.asarray(images[i])
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"image {i} must be uint8 HxWx3, got {img.dtype} {img.shape}")
        grid = grids[i]
        H, W = img.shape[:2]
        gh, gw = grid.shape
        ax = axes[i]
        ax.imshow(img, extent=(0, W, H, 0), interpolation="bilinear")
        ax.imshow(grid, extent=(0, W, H, 0), cmap=CMAP, norm=_own_range(grid), alpha=alpha, interpolation="nearest")
        for x0, y0, x1, y1 in np.asarray(boxes[i], dtype=float).reshape(-1, 4):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=BOX_COLOUR, linewidth=1.5))
        r, c = top_patches[i] if top_patches is not None else np.unravel_index(np.nanargmax(grid), grid.shape)
        ph, pw = H / gh, W / gw
        ax.add_patch(Rectangle((c * pw, r * ph), pw, ph, fill=False, edgecolor=TOP_COLOUR, linewidth=2.0))
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        head = str(titles[i]) if titles is not None else ""
        verdict = f"top {grid[int(r), int(c)]:.2f}"
        colour = "black"
        if hits is not None:
            verdict = f"{'HIT' if hits[i] else 'MISS'}, {verdict}"
            colour = HIT_COLOUR if hits[i] else MISS_COLOUR
        ax.set_title(f"{head}\n{verdict}" if head else verdict, fontsize=8, color=colour, pad=3)
    handles = [Patch(facecolor="none", edgecolor=BOX_COLOUR, linewidth=1.5, label="object box (ground truth)"),
               Patch(facecolor="none", edgecolor=TOP_COLOUR, linewidth=2.0, label="top patch (highest score)")]
    bar = ScalarMappable(Normalize(0.0, 1.0), CMAP)
    _footer(fig, size, bar, f"{score_label}, scaled per image: 0 = its lowest patch, 1 = its highest", handles)
    return _save(fig, path)


def _own_range(grid: np.ndarray) -> Normalize:
    """Each image on its own range: where the model looks inside it, whatever its overall level."""
    finite = grid[np.isfinite(grid)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return Normalize(lo, hi if hi > lo else lo + 1e-9)


def score_distribution(
    scores: np.ndarray, fg_mask: np.ndarray, path: str | Path, bins: int = 50, title: str | None = None,
    xlabel: str = "patch score", fg_label: str = "foreground", bg_label: str = "background",
) -> Path:
    """Histograms (densities) of patch scores inside vs outside the object: how well scores separate them.
    The legend gives each side's patch count and mean, so the gap reads off the picture."""
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
    for sel, label, color in ((fg, fg_label, "tab:orange"), (~fg, bg_label, "tab:blue")):
        vals = scores[sel]
        if vals.size:
            ax.hist(vals, bins=edges, density=True, histtype="stepfilled", alpha=0.45, color=color,
                    label=f"{label} (n={vals.size}, mean={vals.mean():.3f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    if scores.size:
        ax.legend(fontsize=8)
    ax.set_title("\n".join(textwrap.wrap(title or "patch scores: foreground vs background", width=80)), fontsize=10)
    return _save(fig, path)


def vote_map_grid(
    votes: Sequence[np.ndarray],
    path: str | Path,
    images: Sequence[np.ndarray] | None = None,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    boxes: Sequence[np.ndarray] | None = None,
    title: str | None = None,
    alpha: float = 0.9,
) -> Path:
    """LAST votes per patch: how many channels chose the patch among their top-k (so the counts of an
    image sum to k x channels), over the crop if given, on one colour scale with a labelled colour bar;
    boxes (lime) show where the object is."""
    n = len(votes)
    if images is not None and len(images) != n:
        raise ValueError("images must have one entry per vote map")
    if boxes is not None and len(boxes) != n:
        raise ValueError("boxes must have one entry per vote map")
    grids = [_check_grid(f"votes[{i}]", votes[i]) for i in range(n)]
    norm = Normalize(0.0, max(1.0, max(float(np.nanmax(g)) for g in grids)))
    total = {int(round(float(np.nansum(g)))) for g in grids}
    if title is None:
        title = "LAST votes: channels that chose each patch"
    if len(total) == 1:
        title = f"{title} ({total.pop()} votes per image)"
    fig, axes, size = _grid_figure(n, ncols, title)
    for i in range(n):
        grid = np.ma.masked_where(grids[i] == 0, grids[i])  # no vote: no colour, the image shows through
        ax = axes[i]
        H, W = grid.shape
        if images is not None:
            img = np.asarray(images[i])
            H, W = img.shape[:2]
            ax.imshow(img, extent=(0, W, H, 0), interpolation="bilinear")
            # opacity grows with the count: a patch one channel chose barely tints the image
            ax.imshow(grid, extent=(0, W, H, 0), cmap=CMAP, norm=norm, interpolation="nearest",
                      alpha=np.where(grids[i] > 0, 0.3 + (alpha - 0.3) * norm(grids[i]).filled(0), 0.0))
        else:
            ax.imshow(grid, extent=(0, W, H, 0), cmap=CMAP, norm=norm, interpolation="nearest")
        if boxes is not None:
            for x0, y0, x1, y1 in np.asarray(boxes[i], dtype=float).reshape(-1, 4):
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=BOX_COLOUR, linewidth=1.5))
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        head = str(titles[i]) if titles is not None else ""
        most = f"most: {int(np.nanmax(grids[i]))} votes on one patch"
        ax.set_title(f"{head}\n{most}" if head else most, fontsize=8, pad=3)
    handles = [Patch(facecolor="none", edgecolor=BOX_COLOUR, linewidth=1.5, label="object box (ground truth)")]
    _footer(fig, size, ScalarMappable(norm, CMAP), "votes per patch (channels whose top-k includes it); one scale for "
            "all panels; more votes, more opaque; no vote, no colour", handles if boxes is not None else [])
    return _save(fig, path)
