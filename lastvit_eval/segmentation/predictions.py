"""Predicted label maps as palette PNGs (the format of VOC's SegmentationClass), and their colours.

The palette is PASCAL VOC's colour map (VOCdevkit `VOClabelcolormap.m`: the bits of the class id spread
over the high bits of R, G and B), which mmseg, SCLIP and most segmentation viewers use, so class 15 is
VOC's person pink whatever tool opens the file. Pixel values are class ids of the evaluated class list
(the `seg_cls_*.txt` order), 255 where nothing is predicted.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image


@lru_cache(maxsize=1)
def voc_palette() -> tuple[int, ...]:
    """256 RGB triples, flattened (PIL's putpalette layout)."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.extend((r, g, b))
    return tuple(out)


def colorize(labels: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """[H, W] class ids -> [H, W, 3] uint8 in the palette; the ignore index white."""
    pal = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3).copy()
    pal[ignore_index % 256] = 255
    return pal[np.clip(labels, 0, 255).astype(np.int64)]


def write_prediction(path: str | Path, labels: np.ndarray) -> None:
    """One [H, W] map of class ids (< 256) as a palette PNG."""
    arr = np.ascontiguousarray(labels, dtype=np.uint8)
    im = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
    im.putpalette(list(voc_palette()))
    im.save(path, format="PNG")
