"""Semantic-segmentation benchmarks in the layouts mmsegmentation's preparation scripts produce.

Layouts (`layout` in `assets/seg_datasets.json`; see mmsegmentation docs/en/user_guides/2_dataset_prepare.md):

* VOC20 / VOC21: `VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/val.txt}`;
  VOC20 ignores background via reduce_zero_label (SCLIP's PascalVOC20Dataset).
* Context59 / Context60: `VOC2010/{JPEGImages, SegmentationClassContext, ImageSets/SegmentationContext/val.txt}`
  (mmseg's pascal_context converter: 0 = background, 1..59); 59 ignores background (reduce_zero_label).
* COCO-Object: `coco_stuff164k/{images,annotations}/val2017`, labels `*_instanceTrainIds.png` written by
  SCLIP's datasets/cvt_coco_object.py (0 = background incl. stuff and unlabeled, 1..80 = things);
  without them, the raw stuffthingmaps `*.png` are decoded with the same rule.
* COCO-Stuff 164k: same folders, `*_labelTrainIds.png` (mmseg's coco_stuff164k converter, 0..170, 255
  ignored); raw stuffthingmaps decoded with the converter's table otherwise.
* Cityscapes: `leftImg8bit/val/<city>/*_leftImg8bit.png`, `gtFine/val/<city>/*_gtFine_labelTrainIds.png`
  (19 train ids); raw `*_gtFine_labelIds.png` decoded with cityscapesscripts' id -> trainId otherwise.
* ADE20K: `ADEChallengeData2016/{images,annotations}/validation`, 0 ignored (reduce_zero_label).

`root` may be the dataset folder itself or a parent named in `layout.roots` (e.g. `VOCdevkit`).
A label is decoded into int64 class ids in [0, num_classes) plus the ignore index; any other value is
an error naming the file (mmseg would silently drop it from the metric).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from .protocol import SegProtocol


@dataclass(frozen=True)
class SegSample:
    id: str  # path of the image relative to the image folder, without the suffix
    image: Path
    label: Path


@dataclass(frozen=True)
class LabelDecoder:
    """Stored label values -> class ids: mmseg's reduce_zero_label, or a raw-id lookup table."""

    num_classes: int
    ignore_index: int = 255
    reduce_zero_label: bool = False
    lut: tuple[int, ...] | None = None  # raw value -> class id (256 entries) for unconverted labels

    def __call__(self, raw: np.ndarray, source: str | Path = "label") -> np.ndarray:
        arr = raw.astype(np.int64)
        if self.lut is not None:
            if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
                raise InputError(f"{source}: label values outside 0..255 cannot be raw dataset ids")
            arr = np.asarray(self.lut, dtype=np.int64)[arr]
        if self.reduce_zero_label:  # mmseg LoadAnnotations: 0 -> 255, v -> v - 1, (255 - 1) -> 255
            arr = np.where(arr == 0, 255, arr - 1)
            arr[arr == 254] = 255
            arr[arr == 255] = self.ignore_index
        bad = (arr != self.ignore_index) & ((arr < 0) | (arr >= self.num_classes))
        if bad.any():
            value = int(raw.reshape(-1)[np.flatnonzero(bad.reshape(-1))[0]])
            raise InputError(
                f"{source}: label value {value} is not a class id 0..{self.num_classes - 1} or the ignore index "
                f"{self.ignore_index} after decoding (wrong dataset, or labels not converted?)"
            )
        return arr

    def to_dict(self) -> dict:
        kind = "lut" if self.lut is not None else "reduce_zero_label" if self.reduce_zero_label else "identity"
        return {"kind": kind, "num_classes": self.num_classes, "ignore_index": self.ignore_index}


def _raw_lut(raw: dict) -> tuple[int, ...]:
    lut = [int(raw["other"])] * 256
    for train_id, raw_id in enumerate(raw["ids"]):
        lut[int(raw_id)] = train_id + int(raw["offset"])
    return tuple(lut)


def find_root(protocol: SegProtocol, root: str | Path) -> Path:
    """The folder holding `img_dir`: `root` itself or one of the layout's sub-paths."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder ({protocol.name} expects {_expected(protocol)})")
    for sub in protocol.layout["roots"]:
        cand = root / sub if sub else root
        if (cand / protocol.layout["img_dir"]).is_dir():
            return cand
    raise InputError(f"{root}: no {protocol.layout['img_dir']}/ folder here ({protocol.name} expects {_expected(protocol)})")


def _expected(protocol: SegProtocol) -> str:
    lay = protocol.layout
    parts = [f"{lay['img_dir']}/*{lay['img_suffix']}", f"{lay['ann_dir']}/*{lay['seg_map_suffix']}"]
    if lay.get("split_file"):
        parts.append(lay["split_file"])
    return ", ".join(parts)


def list_samples(protocol: SegProtocol, root: str | Path) -> tuple[list[SegSample], LabelDecoder]:
    """Every evaluation image with its label file (sorted, or in split-file order) and the decoder."""
    base = find_root(protocol, root)
    lay = protocol.layout
    img_dir, ann_dir = base / lay["img_dir"], base / lay["ann_dir"]
    if not ann_dir.is_dir():
        raise InputError(f"{ann_dir}: missing label folder ({protocol.name} expects {_expected(protocol)})")
    img_suffix = lay["img_suffix"]
    if lay.get("split_file"):
        split = base / lay["split_file"]
        if not split.is_file():
            raise InputError(f"{split}: missing split file ({protocol.name} expects {_expected(protocol)})")
        ids = [line.strip() for line in split.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        if not ids:
            raise InputError(f"{split}: empty split file")
        for i in ids:
            if not (img_dir / f"{i}{img_suffix}").is_file():
                raise InputError(f"{img_dir / (i + img_suffix)}: listed in {split.name} but missing")
    else:
        ids = sorted(
            p.relative_to(img_dir).as_posix()[: -len(img_suffix)]
            for p in img_dir.rglob(f"*{img_suffix}")
            if p.is_file()
        )
        if not ids:
            raise InputError(f"{img_dir}: no *{img_suffix} images")

    seg_suffix = lay["seg_map_suffix"]
    lut = None
    raw = protocol.raw_labels
    if not (ann_dir / f"{ids[0]}{seg_suffix}").is_file() and raw and (ann_dir / f"{ids[0]}{raw['seg_map_suffix']}").is_file():
        seg_suffix, lut = raw["seg_map_suffix"], _raw_lut(raw)  # unconverted labels: decode raw ids
    samples = []
    for i in ids:
        label = ann_dir / f"{i}{seg_suffix}"
        if not label.is_file():
            raise InputError(f"{label}: missing label for image {img_dir / (i + img_suffix)}")
        samples.append(SegSample(i, img_dir / f"{i}{img_suffix}", label))
    decoder = LabelDecoder(protocol.num_classes, protocol.ignore_index, protocol.reduce_zero_label and lut is None, lut)
    return samples, decoder


def read_label(path: str | Path, decoder: LabelDecoder) -> np.ndarray:
    """A label PNG (palette or grayscale indices) -> int64 [H, W] class ids / ignore index."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise InputError(f"{path}: label image mode {im.mode} is not class indices (need a palette or grayscale PNG)")
            raw = np.asarray(im)
    except (OSError, UnidentifiedImageError) as e:
        raise InputError(f"{path}: cannot read label image ({e.__class__.__name__})") from e
    return decoder(raw, path)


def check_pairs(protocol: SegProtocol, samples: list[SegSample]) -> list[tuple[int, int]]:
    """Before any forward pass (headers only): every image and label opens, the label is a class-index
    image of the image's size, and the protocol's resize leaves at least one whole window per side (the
    tower's positional embedding is not interpolated). Returns each label's (H, W)."""
    from .protocol import rescale_size

    sizes = []
    for s in samples:
        try:
            with Image.open(s.image) as im:
                w, h = im.size
        except (OSError, UnidentifiedImageError) as e:
            raise InputError(f"{s.image}: cannot read image ({e.__class__.__name__})") from e
        try:
            with Image.open(s.label) as lab:
                lw, lh, mode = lab.size[0], lab.size[1], lab.mode
        except (OSError, UnidentifiedImageError) as e:
            raise InputError(f"{s.label}: cannot read label image ({e.__class__.__name__})") from e
        if mode not in ("P", "L", "I", "I;16"):
            raise InputError(f"{s.label}: label image mode {mode} is not class indices (need a palette or grayscale PNG)")
        if (lh, lw) != (h, w):
            raise InputError(f"{s.label}: label is {lw}x{lh} but its image {s.image.name} is {w}x{h}")
        if protocol.window:
            rh, rw = rescale_size(h, w, protocol.resize) if protocol.resize else (h, w)
            if min(rh, rw) < protocol.window:
                raise InputError(f"{s.image}: {rw}x{rh} after the protocol's resize, smaller than the "
                                 f"{protocol.window}-pixel window")
        sizes.append((lh, lw))
    return sizes


@dataclass
class SegData:
    """A segmentation benchmark as a run's test split: protocol, samples in order, label decoder."""

    protocol: SegProtocol
    root: Path
    samples: list[SegSample]
    decoder: LabelDecoder
    sizes: list[tuple[int, int]]  # label (H, W) of the checked samples

    @property
    def source(self) -> str:
        return f"{self.root} ({self.protocol.name})"


def open_dataset(name: str, root: str | Path, classes_file: str | Path | None = None,
                 limit: int | None = None) -> SegData:
    """Protocol + listing + header checks (of the first `limit` samples, the ones a limited run scores)."""
    from .protocol import load_protocol

    protocol = load_protocol(name, classes_file=classes_file)
    samples, decoder = list_samples(protocol, root)
    sizes = check_pairs(protocol, samples[:limit] if limit else samples)
    return SegData(protocol, Path(root), samples, decoder, sizes)
