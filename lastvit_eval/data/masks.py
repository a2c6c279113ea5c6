"""Segmentation masks for point-in-box: COCO polygons/RLE (pycocotools) or per-image `.npy` files.

A mask is pushed through the same resize + center crop as the pixels by torchvision itself
(NEAREST_EXACT samples each output pixel at its centre, the rule geometry.py uses for boxes).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..errors import InputError
from .boxes import Annotation, Box


class MaskSource:
    """Masks by image id, plus boxes (for the filter and for drawing) from the same source."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._coco = None
        self._ids: dict[str, int] = {}
        self._files: dict[str, Path] = {}
        if not self.path.exists():
            raise InputError(f"{self.path}: masks file or folder does not exist")
        if self.path.is_dir():
            self._files = {p.stem: p for p in sorted(self.path.rglob("*.npy"))}
            if not self._files:
                raise InputError(f"{self.path}: no .npy mask files found")
        elif self.path.suffix.lower() == ".json":
            from pycocotools.coco import COCO

            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    self._coco = COCO(str(self.path))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AssertionError) as e:
                raise InputError(f"{self.path}: not a readable COCO annotation file ({e})") from None
            self._ids = {Path(im["file_name"]).stem: im["id"] for im in self._coco.loadImgs(self._coco.getImgIds())}
        else:
            raise InputError(f"{self.path}: masks must be a COCO .json or a folder of <image_id>.npy files")

    def annotations(self, image_ids: list[str]) -> dict[str, Annotation]:
        out = {}
        for image_id in image_ids:
            if self._coco is not None and image_id in self._ids:
                anns = self._coco.loadAnns(self._coco.getAnnIds(imgIds=self._ids[image_id], iscrowd=None))
                boxes = [Box(a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3])
                         for a in anns if a.get("segmentation")]
                out[image_id] = Annotation(boxes=boxes, source=str(self.path))
            elif image_id in self._files:
                m = self._load_npy(image_id)
                ys, xs = np.nonzero(m)
                boxes = [Box(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)] if len(xs) else []
                out[image_id] = Annotation(boxes=boxes, size=(m.shape[1], m.shape[0]), source=str(self._files[image_id]))
        return out

    def _load_npy(self, image_id: str) -> np.ndarray:
        path = self._files[image_id]
        try:
            m = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise InputError(f"{path}: not a readable .npy mask ({e})") from None
        if m.ndim != 2:
            raise InputError(f"{path}: mask must be 2-D (H x W), got shape {m.shape}")
        return m.astype(bool)

    def mask(self, image_id: str, size: tuple[int, int]) -> np.ndarray:
        """Union of the image's object masks at the original resolution, bool [h, w]."""
        w, h = size
        if self._coco is not None:
            m = np.zeros((h, w), dtype=bool)
            for a in self._coco.loadAnns(self._coco.getAnnIds(imgIds=self._ids[image_id], iscrowd=None)):
                if a.get("segmentation"):
                    am = self._coco.annToMask(a).astype(bool)
                    if am.shape != (h, w):
                        raise InputError(f"{self.path}: mask of {image_id} is {am.shape[::-1]}, image is {(w, h)}")
                    m |= am
            return m
        m = self._load_npy(image_id)
        if m.shape != (h, w):
            raise InputError(f"{self._files[image_id]}: mask is {m.shape[1]}x{m.shape[0]}, image is {w}x{h}")
        return m


def mask_to_crop(mask: np.ndarray, resize: int, crop: int) -> np.ndarray:
    t = torch.from_numpy(mask.astype(np.uint8))[None]
    t = TF.resize(t, [resize], interpolation=InterpolationMode.NEAREST_EXACT)
    return TF.center_crop(t, [crop])[0].numpy().astype(bool)
