"""A COCO subset given by an image list, with boxes as LOST takes them (COCO20k for object discovery).

COCO20k is the 19,817-image subset of COCO train2014 used by LOST (valeoai/LOST,
`datasets/coco_20k_filenames.txt`, not shipped here). Its format, read by `datasets.py: select_coco_20k`:
one file name per line, `train2014/COCO_train2014_000000560992.jpg`; the image id is the integer after the
last underscore (`int(s.split("_")[-1].split(".")[0])`). Bare integer ids, one per line, are accepted too.

Boxes follow `datasets.py: extract_gt_COCO(remove_iscrowd=True)`: crowd annotations are dropped and
[x, y, w, h] becomes (x, y, x + w, y + h) with every coordinate rounded to an integer by Python's
`round` (half to even), in COCO's pixel-edge coordinates (x1/y1 exclusive). `round_coords=False` keeps
the exact floats.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError


@dataclass
class COCOImage:
    image_id: int
    file_name: str
    size: tuple[int, int]  # (w, h)
    boxes: np.ndarray  # float [n, 4], pixel-edge (x0, y0, x1, y1), crowd boxes removed
    category_ids: list[int]
    n_crowd: int  # crowd annotations dropped


def read_image_list(path: Path) -> list[int]:
    """LOST's COCO20k list (or any such list): image ids in file order."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: image list file does not exist")
    ids: list[int] = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        if s.isdigit():
            ids.append(int(s))
            continue
        stem = s.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        tail = stem.rsplit("_", 1)[-1]
        if "." not in s.rsplit("/", 1)[-1] or not tail.isdigit():
            raise InputError(f"{path}:{line_no}: expected a file name like train2014/COCO_train2014_000000560992.jpg "
                             f"or an integer id, got {s!r}")
        ids.append(int(tail))
    if not ids:
        raise InputError(f"{path}: image list is empty")
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: image ids repeat")
    return ids


def _round(v: float) -> float:
    return float(round(v))


def load_coco_subset(annotations: Path, image_ids: list[int] | None = None,
                     round_coords: bool = True) -> dict[int, COCOImage]:
    """COCO instances json (pycocotools) -> {image id: COCOImage} for the listed ids (all when None), in list order.

    An id of the list missing from the json is an error (a wrong annotation file, e.g. val2014 for a
    train2014 list), not a silently smaller subset.
    """
    from pycocotools.coco import COCO

    annotations = Path(annotations)
    if not annotations.is_file():
        raise InputError(f"{annotations}: COCO annotation file does not exist")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(annotations))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{annotations}: malformed COCO json ({e})") from None
    except (KeyError, TypeError, AssertionError) as e:
        raise InputError(f"{annotations}: not a COCO instances file ({type(e).__name__}: {e})") from None
    known = set(coco.getImgIds())
    ids = sorted(known) if image_ids is None else list(image_ids)
    missing = [i for i in ids if i not in known]
    if missing:
        raise InputError(f"{annotations}: {len(missing)} listed image ids are not in this file (first: {missing[0]})")
    out: dict[int, COCOImage] = {}
    for img in coco.loadImgs(ids):
        try:
            size = (int(img["width"]), int(img["height"]))
            boxes, cats, n_crowd = [], [], 0
            for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"], iscrowd=None)):
                if a.get("iscrowd", 0) == 1:
                    n_crowd += 1
                    continue
                x, y, w, h = (float(v) for v in a["bbox"])
                box = (x, y, x + w, y + h)
                boxes.append(tuple(_round(v) for v in box) if round_coords else box)
                cats.append(int(a["category_id"]))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{annotations}: image {img.get('id')}: malformed image or annotation entry "
                             f"({type(e).__name__}: {e})") from None
        out[int(img["id"])] = COCOImage(int(img["id"]), str(img.get("file_name", "")), size,
                                        np.asarray(boxes, dtype=np.float64).reshape(-1, 4), cats, n_crowd)
    return out
