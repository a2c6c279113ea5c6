"""Segmentation masks for point-in-box: COCO polygons/RLE (pycocotools) or per-image `.npy` files.

A mask is pushed through the same resize + center crop as the pixels by torchvision itself
(NEAREST_EXACT samples each output pixel at its centre, the rule geometry.py uses for boxes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .boxes import Annotation, Box, coco_size, load_coco


class MaskSource:
    """Masks by image id, plus boxes (for the filter and for drawing) from the same source.

    Each annotation carries the size its mask was drawn for (the COCO image entry, the .npy shape), so
    `load_pib_data` compares it with the image before any mask is resized onto the wrong pixels.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._coco = None
        self._images: dict[str, dict] = {}
        self._files: dict[str, Path] = {}
        if not self.path.exists():
            raise InputError(f"{self.path}: masks file or folder does not exist")
        if self.path.is_dir():
            self._files = {p.stem: p for p in sorted(self.path.rglob("*.npy"))}
            if not self._files:
                raise InputError(f"{self.path}: no .npy mask files found")
        elif self.path.suffix.lower() == ".json":
            self._coco = load_coco(self.path)
            self._images = {Path(str(im["file_name"])).stem: im for im in self._coco.loadImgs(self._coco.getImgIds())}
        else:
            raise InputError(f"{self.path}: masks must be a COCO .json or a folder of <image_id>.npy files")

    def _anns(self, image_id: str) -> list[dict]:
        coco = self._coco
        return coco.loadAnns(coco.getAnnIds(imgIds=self._images[image_id]["id"], iscrowd=None))  # type: ignore[union-attr]

    def annotations(self, image_ids: list[str]) -> dict[str, Annotation]:
        out = {}
        for image_id in image_ids:
            if self._coco is not None and image_id in self._images:
                img = self._images[image_id]
                boxes = [Box(a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3])
                         for a in self._anns(image_id) if a.get("segmentation")]
                out[image_id] = Annotation(boxes=boxes, size=coco_size(img),
                                           source=f"{self.path} (image {img['file_name']})")
            elif image_id in self._files:
                m = self._load_npy(image_id)
                ys, xs = np.nonzero(m)
                boxes = [Box(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)] if len(xs) else []
                out[image_id] = Annotation(boxes=boxes, size=(m.shape[1], m.shape[0]), source=str(self._files[image_id]))
        return out

    def _load_npy(self, image_id: str) -> np.ndarray:
        """Non-zero = object. Floats must be finite (NaN would silently count as object)."""
        path = self._files[image_id]
        try:
            m = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"{path}: not a readable .npy mask ({e})") from None
        if m.ndim != 2:
            raise InputError(f"{path}: mask must be 2-D (H x W), got shape {m.shape}")
        if m.dtype.kind not in "biuf":
            raise InputError(f"{path}: mask must hold numbers or booleans, got dtype {m.dtype}")
        if m.dtype.kind == "f" and not np.isfinite(m).all():
            raise InputError(f"{path}: mask holds NaN or inf")
        return m.astype(bool)

    def mask(self, image_id: str, size: tuple[int, int]) -> np.ndarray:
        """Union of the image's object masks at the original resolution, bool [h, w]."""
        w, h = size
        if self._coco is not None:
            img = self._images[image_id]
            if coco_size(img) is None:
                raise InputError(f"{self.path}: image {img['file_name']} needs width and height for its masks")
            m = np.zeros((h, w), dtype=bool)
            for a in self._anns(image_id):
                if a.get("segmentation"):
                    try:
                        am = self._coco.annToMask(a).astype(bool)
                    except Exception as e:  # pycocotools raises bare Exception / TypeError for bad polygons or RLE
                        raise InputError(f"{self.path}: annotation id {a['id']} ({img['file_name']}) has an "
                                         f"unreadable segmentation ({type(e).__name__}: {e})") from None
                    if am.shape != (h, w):
                        raise InputError(f"{self.path}: mask of {image_id} is {am.shape[::-1]}, image is {(w, h)}")
                    m |= am
            return m
        m = self._load_npy(image_id)
        if m.shape != (h, w):
            raise InputError(f"{self._files[image_id]}: mask is {m.shape[1]}x{m.shape[0]}, image is {w}x{h}")
        return m


def mask_to_crop(mask: np.ndarray, resize: int, crop: int, kind: str = "resize-crop") -> np.ndarray:
    """Mask through the model's resize (geometry.input_resize: short side, or squash) + center crop, nearest."""
    from torchvision.transforms import InterpolationMode  # here: importing torchvision costs a command seconds
    from torchvision.transforms.v2 import functional as TF

    from ..geometry import input_resize

    nw, nh = input_resize(mask.shape[1], mask.shape[0], resize, crop, kind)
    t = torch.from_numpy(mask.astype(np.uint8))[None]
    t = TF.resize(t, [nh, nw], interpolation=InterpolationMode.NEAREST_EXACT)
    return TF.center_crop(t, [crop])[0].numpy().astype(bool)
