"""Image files -> 8-bit RGB the way a user expects, and header-only sizes, with one rule for bad files.

PIL's own `convert("RGB")` is right for most modes but clips 16-bit values at 255 (a 16-bit PNG comes
out all white), so integer modes wider than 8 bits are scaled here: v -> round(v / 257), which maps
0..65535 onto 0..255 end to end. Alpha is dropped, not composited onto a background, as PIL's
`convert("RGB")` and torchvision's `decode_image(mode=RGB)` do: a transparent pixel keeps the colour
stored under it (for palette images, the palette entry). A float image (`F`) is read as [0, 1], the
convention of torchvision's tensors; values outside that range (or NaN) are an error, never a guess.
EXIF orientation is not applied, as in torchvision's ImageFolder loader: boxes refer to stored pixels.

A file over PIL's pixel limit (`Image.MAX_IMAGE_PIXELS`) is a bad image whichever way PIL reports it:
the DecompressionBombWarning (over the limit) is raised as a DecompressionBombError, like the error
PIL raises itself at twice the limit, so callers catch one family of errors (`BAD_IMAGE_ERRORS`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

# What a broken, truncated, unsupported or oversized image file raises from `load_rgb` / `read_size`.
BAD_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, RuntimeError)

_WIDE_INT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def _open(path: Path) -> Image.Image:
    """Image.open with PIL's bomb warning turned into its bomb error (callers use it as a context manager)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombWarning as e:
        raise Image.DecompressionBombError(str(e)) from None


def read_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    with _open(path) as im:
        return im.size


def load_rgb(path: Path) -> Image.Image:
    """Decode now (truncated or corrupt files fail here, not later) and convert to 8-bit RGB."""
    with _open(path) as im:
        im.load()
        return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB, 8 bits per channel (see the module docstring for the rules)."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in _WIDE_INT_MODES:
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"{im.mode} image with values in [{a.min()}, {a.max()}], outside the 16-bit range")
        return Image.fromarray(((a + 128) // 257).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise ValueError(f"float image with values in [{np.nanmin(a)}, {np.nanmax(a)}]; expected [0, 1]")
        return Image.fromarray(np.rint(a * 255.0).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL warns on P+transparency -> RGB; the colours are the same
    return im.convert("RGB")
