"""Decode + resize + crop in DataLoader workers; uint8 out, so host->device copies stay small."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.transform import TransformSpec

BAD_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, RuntimeError)


def load_rgb(path: Path) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.load()  # decode now: truncated / corrupt files fail here, not later
            return im.convert("RGB")


class ImageDataset(Dataset):
    """Yields (index, uint8 [3, crop, crop] or None, error or None); a bad file never kills the run."""

    def __init__(self, paths: list[Path], transform: TransformSpec) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.transform.pixels(load_rgb(self.paths[i])), None
        except BAD_IMAGE_ERRORS as e:
            return i, None, f"{type(e).__name__}: {e}"


def collate(items):
    ok = [(i, x) for i, x, err in items if err is None]
    bad = [(i, err) for i, x, err in items if err is not None]
    idx = torch.tensor([i for i, _ in ok], dtype=torch.long)
    batch = torch.stack([x for _, x in ok]) if ok else None
    return idx, batch, bad
