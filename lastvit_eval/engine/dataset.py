"""Decode + resize + crop in DataLoader workers; uint8 out, so host->device copies stay small."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.decode import load_rgb  # 16-bit/palette/CMYK -> RGB; a bomb is a bad image
from ..data.transform import TransformSpec

BAD_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, RuntimeError)


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


class EncodedDataset(Dataset):
    """Yields (index, file bytes as uint8 [n], error or None) for decoding on the GPU."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            data = Path(self.paths[i]).read_bytes()
        except OSError as e:
            return i, None, f"{type(e).__name__}: {e}"
        if not data:
            return i, None, "OSError: empty file"
        return i, torch.frombuffer(bytearray(data), dtype=torch.uint8), None


def collate_encoded(items):
    ok = [(i, x) for i, x, err in items if err is None]
    bad = [(i, err) for i, x, err in items if err is not None]
    return torch.tensor([i for i, _ in ok], dtype=torch.long), [x for _, x in ok], bad
