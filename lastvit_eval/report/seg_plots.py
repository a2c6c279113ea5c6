"""The zero-shot segmentation picture: image | prediction | ground truth for a few images (arrays only).

Colours are the VOC palette the prediction PNGs use (white = ignored); a legend names the classes
shown. Rendering goes through matplotlib's Agg canvas on a bare `Figure` (no pyplot), as `plots` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..segmentation.predictions import colorize, voc_palette
from .plots import _save

PANEL = 2.6  # inches per panel
MAX_LEGEND = 24


def seg_examples(examples: Sequence[dict], class_names: Sequence[str], path: str | Path, title: str = "",
                 ignore_index: int = 255) -> Path:
    """`examples`: dicts with `id`, `image` [h, w, 3] uint8, `pred` and `label` [h, w] class ids."""
    if not examples:
        raise ValueError("no examples to draw")
    rows = len(examples)
    legend_h = 0.9
    fig = Figure(figsize=(3 * PANEL, rows * PANEL + 0.4 + legend_h), dpi=100)
    FigureCanvasAgg(fig)
    fw, fh = fig.get_size_inches()
    shown: set[int] = set()
    for r, ex in enumerate(examples):
        for c, (name, arr) in enumerate((("image", ex["image"]), ("prediction", colorize(ex["pred"], ignore_index)),
                                         ("ground truth", colorize(ex["label"], ignore_index)))):
            y0 = fh - 0.4 - (r + 1) * PANEL
            ax = fig.add_axes(((c * PANEL + 0.1) / fw, (y0 + 0.1) / fh, (PANEL - 0.2) / fw, (PANEL - 0.35) / fh))
            ax.imshow(arr, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(f"{ex['id']}" if c == 0 else name, fontsize=7)
        for m in (ex["pred"], ex["label"]):
            shown.update(int(v) for v in np.unique(m) if v != ignore_index and 0 <= v < len(class_names))
    if title:
        fig.text(0.5, 1 - 0.08 / fh, title, ha="center", va="top", fontsize=9)
    pal = np.asarray(voc_palette(), dtype=float).reshape(256, 3) / 255.0
    ids = sorted(shown)[:MAX_LEGEND]
    handles = [Patch(facecolor=pal[i], edgecolor="black", linewidth=0.3, label=class_names[i]) for i in ids]
    handles.append(Patch(facecolor="white", edgecolor="black", linewidth=0.3, label="ignored"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=6, frameon=False,
               bbox_to_anchor=(0.5, 0.02))
    return _save(fig, path)
