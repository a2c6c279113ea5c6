"""Bounding boxes from ImageNet/VOC XML folders (lxml), Kaggle LOC_val_solution.csv (pandas), COCO (pycocotools).

Boxes are kept as given, in original-image pixel-edge coordinates (see geometry.py).
"""

from __future__ import annotations

import contextlib
import io
import json
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
    try:
        tree = etree.parse(str(path))
    except (etree.XMLSyntaxError, OSError) as e:
        raise InputError(f"{path}: malformed XML ({e})") from None
    root = tree.getroot()
    ann = Annotation(source=str(path))
    w, h = root.findtext("size/width"), root.findtext("size/height")
    try:
        if w and h:
            ann.size = (int(float(w)), int(float(h)))
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
    """One XML per image, named <image_id>.xml (searched recursively, e.g. val/<wnid>/<id>.xml)."""
    files = {p.stem: p for p in sorted(folder.rglob("*.xml"))}
    if not files:
        raise InputError(f"{folder}: no .xml box files found")
    wanted = files.keys() if image_ids is None else [i for i in image_ids if i in files]
    return {i: read_voc_xml(files[i]) for i in wanted}


def read_loc_csv(path: Path) -> dict[str, Annotation]:
    """Kaggle LOC_val_solution.csv: ImageId, PredictionString = 'wnid x0 y0 x1 y1 wnid x0 ...'."""
    try:
        df = pd.read_csv(path, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
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


def read_coco(path: Path) -> dict[str, Annotation]:
    """COCO instances json: bbox [x, y, w, h] -> (x, y, x + w, y + h); image id = file_name stem."""
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: malformed COCO json ({e})") from None
    except (KeyError, TypeError, AssertionError) as e:
        raise InputError(f"{path}: not a COCO annotation file ({type(e).__name__}: {e})") from None
    cats = {c["id"]: c.get("name") for c in coco.loadCats(coco.getCatIds())}
    out: dict[str, Annotation] = {}
    for img in coco.loadImgs(coco.getImgIds()):
        ann = Annotation(size=(img.get("width"), img.get("height")) if "width" in img else None, source=str(path))
        for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"], iscrowd=None)):
            x, y, w, h = a["bbox"]
            ann.boxes.append(Box(x, y, x + w, y + h, cats.get(a["category_id"])))
        out[Path(img["file_name"]).stem] = ann
    return out
