"""PASCAL VOC in the devkit layout: image sets, object boxes (lxml) and class segmentation PNGs.

Layout (`root` may be the folder holding `VOCdevkit`, `VOCdevkit` itself, or `VOC2007` / `VOC2012`)::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
                      Annotations/<id>.xml
                      ImageSets/Main/<set>.txt           (detection sets: train, val, trainval, test)
                      ImageSets/Segmentation/<set>.txt   (segmentation sets)
                      SegmentationClass/<id>.png          (palette PNG: 0 background, 1..20 classes, 255 ignore)

Coordinates. VOC XML boxes are 1-based inclusive pixel indices (xmin=1, xmax=W covers the whole row).
Pixel i (1-based) spans [i - 1, i) in pixel-edge coordinates, so a box becomes
(xmin - 1, ymin - 1, xmax, ymax): 0-based pixel-edge coordinates with x1/y1 exclusive, the convention of
`geometry.py` and of LOST (`datasets.py: extract_gt_VOC` subtracts 1 from xmin/ymin only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from lxml import etree
from PIL import Image

from ..errors import InputError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
IGNORE_INDEX = 255


@dataclass(frozen=True)
class VOCObject:
    name: str
    box: tuple[float, float, float, float]  # 0-based pixel-edge (x0, y0, x1, y1), x1/y1 exclusive
    difficult: bool = False
    truncated: bool = False

    @property
    def hard(self) -> bool:
        """LOST's "hard" object (`datasets.py: discard_hard_voc`): truncated or difficult."""
        return self.difficult or self.truncated


@dataclass
class VOCAnnotation:
    image_id: str
    filename: str
    size: tuple[int, int]  # (w, h) from <size>
    objects: list[VOCObject] = field(default_factory=list)
    source: str = ""

    def boxes(self, exclude_hard: bool = False) -> np.ndarray:
        """Object boxes as float [n, 4]; `exclude_hard` drops truncated or difficult ones (LOST's --no_hard)."""
        rows = [o.box for o in self.objects if not (exclude_hard and o.hard)]
        return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def _flag(obj, tag: str, path: Path) -> bool:
    text = obj.findtext(tag)
    if text is None or not text.strip():
        return False
    try:
        return bool(int(float(text)))
    except ValueError:
        raise InputError(f"{path}: <{tag}> must be 0 or 1, got {text!r}") from None


def read_voc_annotation(path: Path) -> VOCAnnotation:
    """One VOC XML file -> VOCAnnotation (boxes converted to 0-based pixel-edge coordinates)."""
    path = Path(path)
    try:
        root = etree.parse(str(path)).getroot()
    except OSError as e:
        raise InputError(f"{path}: cannot read annotation ({e})") from None
    except etree.XMLSyntaxError as e:
        raise InputError(f"{path}: malformed XML ({e})") from None
    if root.tag != "annotation":
        raise InputError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    try:
        size = (int(float(root.findtext("size/width"))), int(float(root.findtext("size/height"))))
    except (TypeError, ValueError):
        raise InputError(f"{path}: missing or non-numeric <size><width>/<height>") from None
    if min(size) <= 0:
        raise InputError(f"{path}: image size {size[0]}x{size[1]} is not positive")
    ann = VOCAnnotation(image_id=path.stem, filename=root.findtext("filename") or f"{path.stem}.jpg", size=size,
                        source=str(path))
    for obj in root.findall("object"):  # direct children only: <part> boxes (person layout) are not objects
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if not name or bb is None:
            raise InputError(f"{path}: <object> without <name> or <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise InputError(f"{path}: <bndbox> of {name!r} lacks a numeric xmin/ymin/xmax/ymax") from None
        box = (xmin - 1.0, ymin - 1.0, xmax, ymax)
        if not (box[0] < box[2] and box[1] < box[3]):
            raise InputError(f"{path}: empty box for {name!r}: xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g}")
        ann.objects.append(VOCObject(name, box, _flag(obj, "difficult", path), _flag(obj, "truncated", path)))
    return ann


def read_image_set(path: Path) -> list[str]:
    """ImageSets/*/<set>.txt: one image id per line (a second column, as in the per-class lists, is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: image set file does not exist")
    ids = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 2 or "/" in parts[0] or "." in parts[0]:
            raise InputError(f"{path}:{line_no}: expected an image id such as 2008_000008, got {line.strip()!r}")
        ids.append(parts[0])
    if not ids:
        raise InputError(f"{path}: image set is empty")
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: image ids repeat")
    return ids


def read_segmentation(path: Path) -> np.ndarray:
    """A class-segmentation PNG read as palette indices (uint8 [h, w]; 255 = ignore), never as colours."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise InputError(f"{path}: segmentation PNG must be palette (P) or grayscale (L), got mode {im.mode}")
            arr = np.array(im)
    except OSError as e:
        raise InputError(f"{path}: unreadable segmentation PNG ({e})") from None
    bad = (arr > len(VOC_CLASSES)) & (arr != IGNORE_INDEX)
    if bad.any():
        raise InputError(f"{path}: label {int(arr[bad][0])} is neither a VOC class (0..20) nor ignore (255)")
    return arr


def find_voc_year(root: Path, year: str) -> Path:
    """The VOC<year> folder under `root` (its parent, VOCdevkit, or itself)."""
    root = Path(root)
    for p in (root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root):
        if (p / "JPEGImages").is_dir():
            return p
    raise InputError(f"{root}: no VOC{year}/JPEGImages found (looked in VOCdevkit/VOC{year}, VOC{year}, and {root})")


class VOCDataset:
    """One VOC year: image ids of a set, their XML annotations, image paths and segmentation masks."""

    def __init__(self, root: Path, year: str = "2007") -> None:
        if str(year) not in ("2007", "2012"):
            raise InputError(f"{root}: VOC year must be 2007 or 2012, got {year!r}")
        self.year = str(year)
        self.root = find_voc_year(root, self.year)

    def image_ids(self, image_set: str = "trainval", task: str = "Main") -> list[str]:
        """Ids listed in ImageSets/<task>/<image_set>.txt (task: Main for detection, Segmentation)."""
        return read_image_set(self.root / "ImageSets" / task / f"{image_set}.txt")

    def image_path(self, image_id: str) -> Path:
        path = self.root / "JPEGImages" / f"{image_id}.jpg"
        if not path.is_file():
            raise InputError(f"{path}: image listed in the image set does not exist")
        return path

    def annotation(self, image_id: str) -> VOCAnnotation:
        path = self.root / "Annotations" / f"{image_id}.xml"
        if not path.is_file():
            raise InputError(f"{path}: annotation of an image in the image set does not exist")
        return read_voc_annotation(path)

    def annotations(self, image_set: str = "trainval") -> dict[str, VOCAnnotation]:
        return {i: self.annotation(i) for i in self.image_ids(image_set)}

    def segmentation(self, image_id: str) -> np.ndarray:
        path = self.root / "SegmentationClass" / f"{image_id}.png"
        if not path.is_file():
            raise InputError(f"{path}: segmentation mask of an image in the image set does not exist")
        return read_segmentation(path)
