"""Bounding boxes from ImageNet/VOC XML folders (lxml), Kaggle LOC_val_solution.csv (pandas), COCO (pycocotools).

Boxes are kept as given, in original-image pixel-edge coordinates (see geometry.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from lxml import etree

from ..errors import InputError

# Where ImageNet box folders usually live relative to the dataset root.
BOX_LOCATIONS = ("bbox", "bbox/val", "val_label/val", "val_label", "LOC_val", "Annotations/CLS-LOC/val",
                 "ILSVRC/Annotations/CLS-LOC/val", "LOC_val_solution.csv", "annotations.json")


@dataclass
class Box:
    x0: float
    y0: float
    x1: float
    y1: float
    name: str | None = None  # wnid or category name

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    def area(self) -> float:
        return max(self.x1 - self.x0, 0.0) * max(self.y1 - self.y0, 0.0)


@dataclass
class Annotation:
    boxes: list[Box] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (w, h) as written in the file, if any
    source: str = ""


def find_boxes(root: Path) -> Path:
    for rel in BOX_LOCATIONS:
        p = Path(root) / rel
        if p.is_file() or (p.is_dir() and any(p.glob("*.xml"))):
            return p
    raise InputError(f"{root}: no boxes found (looked in {', '.join(BOX_LOCATIONS)}); pass --boxes PATH")


def load_boxes(path: Path, image_ids: list[str] | None = None) -> dict[str, Annotation]:
    """Dispatch on what `path` is: a folder of XML files, a .csv, or a COCO .json."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: boxes file or folder does not exist")
    if path.is_dir():
        return read_voc_dir(path, image_ids)
    if path.suffix.lower() == ".csv":
        return read_loc_csv(path)
    if path.suffix.lower() == ".json":
        return read_coco(path)
    if path.suffix.lower() == ".xml":
        return {path.stem: read_voc_xml(path)}
    raise InputError(f"{path}: unknown boxes format (expected a folder of XML, a .csv or a COCO .json)")


def read_voc_xml(path: Path) -> Annotation:
    """One VOC/ImageNet XML. Coordinates are read as written (NaN/inf included): whether a box is valid
    for its image is decided once, against the image's real size, by `filters.annotation_problem`."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        tree = etree.ElementTree(etree.fromstring(data))
    except etree.XMLSyntaxError as e:
        raise InputError(f"{path}: malformed XML ({e})") from None
    root = tree.getroot()
    ann = Annotation(source=str(path))
    w, h = root.findtext("size/width"), root.findtext("size/height")
    try:
        if w and h:
            fw, fh = float(w), float(h)
            if not (fw.is_integer() and fh.is_integer()):
                raise InputError(f"{path}: <size> must hold whole pixels, got {w.strip()}x{h.strip()}")
            ann.size = (int(fw), int(fh))
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            if bb is None:
                raise InputError(f"{path}: <object> without <bndbox>")
            coords = [bb.findtext(t) for t in ("xmin", "ymin", "xmax", "ymax")]
            if any(c is None for c in coords):
                raise InputError(f"{path}: <bndbox> lacks one of xmin/ymin/xmax/ymax")
            x0, y0, x1, y1 = (float(c) for c in coords)
            ann.boxes.append(Box(x0, y0, x1, y1, obj.findtext("name")))
    except ValueError as e:
        raise InputError(f"{path}: non-numeric value in box or size ({e})") from None
    return ann


def read_voc_dir(folder: Path, image_ids: list[str] | None = None) -> dict[str, Annotation]:
    """One XML per image, named <image_id>.xml (searched recursively, e.g. val/<wnid>/<id>.xml).

    A sub-folder that cannot be listed is an error: its images would otherwise read as 'no annotation'."""

    def unreadable(e: OSError) -> None:
        raise InputError(f"{e.filename}: cannot list folder ({e.strerror or e})")

    files = {p.stem: p for p in sorted(Path(d) / f for d, _, names in os.walk(folder, onerror=unreadable)
                                       for f in names if f.lower().endswith(".xml"))}
    if not files:
        raise InputError(f"{folder}: no .xml box files found")
    wanted = files.keys() if image_ids is None else [i for i in image_ids if i in files]
    return {i: read_voc_xml(files[i]) for i in wanted}


def read_loc_csv(path: Path) -> dict[str, Annotation]:
    """Kaggle LOC_val_solution.csv: ImageId, PredictionString = 'wnid x0 y0 x1 y1 wnid x0 ...'."""
    try:
        df = pd.read_csv(path, dtype=str)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable CSV ({e})") from None
    if not {"ImageId", "PredictionString"} <= set(df.columns):
        raise InputError(f"{path}: expected columns ImageId,PredictionString, found {list(df.columns)}")
    out: dict[str, Annotation] = {}
    for line, (image_id, pred) in enumerate(zip(df["ImageId"], df["PredictionString"], strict=True), start=2):
        parts = str(pred).split()
        if len(parts) % 5:
            raise InputError(f"{path}:{line}: PredictionString must hold groups of 'wnid x0 y0 x1 y1'")
        ann = Annotation(source=f"{path}:{line}")
        try:
            for i in range(0, len(parts), 5):
                x0, y0, x1, y1 = (float(v) for v in parts[i + 1: i + 5])
                ann.boxes.append(Box(x0, y0, x1, y1, parts[i]))
        except ValueError:
            raise InputError(f"{path}:{line}: non-numeric box coordinate in {pred!r}") from None
        out[Path(str(image_id)).stem] = ann
    return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_coco(path: Path, d) -> None:
    """The structure pycocotools assumes, checked first, so a wrong file is named with the missing key
    instead of turning into 'no boxes' for every image or a KeyError deep in pycocotools."""
    if not isinstance(d, dict):
        raise InputError(f"{path}: not a COCO annotation file (top level is a {type(d).__name__}, not an object)")
    for key in ("images", "annotations", "categories"):
        if key not in d:
            raise InputError(f"{path}: no {key!r} key (a COCO instances file has images, annotations, categories)")
        if not isinstance(d[key], list):
            raise InputError(f"{path}: {key!r} must be a list, got {type(d[key]).__name__}")
    if not d["categories"]:
        raise InputError(f"{path}: 'categories' is empty")
    cat_ids = set()
    for n, c in enumerate(d["categories"]):
        if not isinstance(c, dict) or "id" not in c:
            raise InputError(f"{path}: categories[{n}] has no 'id'")
        cat_ids.add(c["id"])
    image_ids, stems = set(), {}
    for n, im in enumerate(d["images"]):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise InputError(f"{path}: images[{n}] needs 'id' and 'file_name'")
        if im["id"] in image_ids:
            raise InputError(f"{path}: image id {im['id']!r} appears twice in 'images'")
        image_ids.add(im["id"])
        stem = Path(str(im["file_name"])).stem
        if stem in stems:
            raise InputError(f"{path}: images {stems[stem]!r} and {im['file_name']!r} share the image id {stem!r}")
        stems[stem] = im["file_name"]
        for key in ("width", "height"):
            if key in im and not (isinstance(im[key], int) and not isinstance(im[key], bool) and im[key] > 0):
                raise InputError(f"{path}: images[{n}] ({im['file_name']}) has {key} {im[key]!r}, "
                                 "not a positive integer")
    ann_ids = set()
    for n, a in enumerate(d["annotations"]):
        where = f"annotations[{n}]" + (f" (id {a['id']})" if isinstance(a, dict) and "id" in a else "")
        if not isinstance(a, dict):
            raise InputError(f"{path}: {where} is not an object")
        for key in ("id", "image_id", "category_id", "bbox"):
            if key not in a:
                raise InputError(f"{path}: {where} has no {key!r}")
        if a["id"] in ann_ids:  # pycocotools would keep the last one under both
            raise InputError(f"{path}: annotation id {a['id']!r} appears twice")
        ann_ids.add(a["id"])
        if a["category_id"] not in cat_ids:
            raise InputError(f"{path}: {where} has category_id {a['category_id']!r}, not in 'categories'")
        bbox = a["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
            raise InputError(f"{path}: {where} has bbox {bbox!r}; expected [x, y, width, height]")


def load_coco(path: Path):
    """A checked pycocotools COCO index (its own json loader would print, and take any structure)."""
    from pycocotools.coco import COCO

    path = Path(path)
    try:
        d = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: malformed COCO json ({e})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    _check_coco(path, d)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = d
        coco.createIndex()
    return coco


def coco_size(img: dict) -> tuple[int, int] | None:
    return (img["width"], img["height"]) if "width" in img and "height" in img else None


def read_coco(path: Path) -> dict[str, Annotation]:
    """COCO instances json: bbox [x, y, w, h] -> (x, y, x + w, y + h); image id = file_name stem."""
    coco = load_coco(path)
    cats = {c["id"]: c.get("name") for c in coco.loadCats(coco.getCatIds())}
    out: dict[str, Annotation] = {}
    for img in coco.loadImgs(coco.getImgIds()):
        ann = Annotation(size=coco_size(img), source=f"{path} (image {img['file_name']})")
        for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"], iscrowd=None)):
            x, y, w, h = a["bbox"]
            ann.boxes.append(Box(x, y, x + w, y + h, cats[a["category_id"]]))
        out[Path(str(img["file_name"])).stem] = ann
    return out
