"""A COCO subset given by an image list, with boxes as LOST takes them (COCO20k for object discovery).

COCO20k is the 19,817-image subset of COCO train2014 used by LOST and later work. Its list ships as
`assets/coco_20k_filenames.txt`, a byte copy of valeoai/LOST's `datasets/coco_20k_filenames.txt` (commit
fcedbecb644f18358a660ce58c739cc6374feda8); `--image-list coco20k` names it. Its format, read by LOST's
`datasets.py: select_coco_20k`:
one file name per line, `train2014/COCO_train2014_000000560992.jpg`; the image id is the integer after the
last underscore (`int(s.split("_")[-1].split(".")[0])`). Bare integer ids, one per line, are accepted too.

Boxes follow `datasets.py: extract_gt_COCO(remove_iscrowd=True)`: crowd annotations are dropped and
[x, y, w, h] becomes (x, y, x + w, y + h) with every coordinate rounded to an integer by Python's
`round` (half to even), in COCO's pixel-edge coordinates (x1/y1 exclusive). `round_coords=False` keeps
the exact floats.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
from dataclasses import dataclass
from importlib import resources
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


COCO20K = "coco20k"  # `--image-list coco20k`: the shipped list (a file of that name: write ./coco20k)
COCO20K_ASSET = "assets/coco_20k_filenames.txt"
COCO20K_SIZE = 19817


def ids_digest(ids: list[int]) -> str:
    """sha256 of the sorted ids, one per line: the same subset gives the same digest whatever the list's format
    (file names or bare ids) or order."""
    return hashlib.sha256("".join(f"{i}\n" for i in sorted(ids)).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def coco20k_ids() -> tuple[int, ...]:
    """The shipped COCO20k list's ids, in LOST's file order."""
    text = resources.files("lastvit_eval").joinpath(COCO20K_ASSET).read_text(encoding="utf-8")
    return tuple(_parse_ids(text, COCO20K_ASSET))


@functools.lru_cache(maxsize=1)
def coco20k_digest() -> str:
    return ids_digest(list(coco20k_ids()))


def read_image_list(spec: str | Path) -> list[int]:
    """LOST's COCO20k list (or any such list): image ids in file order. `coco20k` is the shipped list."""
    if str(spec) == COCO20K and isinstance(spec, str):
        return list(coco20k_ids())
    path = Path(spec)
    if not path.is_file():
        hint = f" (`{COCO20K}` names the shipped COCO20k list)" if path.name.lower().startswith("coco") else ""
        raise InputError(f"{path}: image list file does not exist{hint}")
    return _parse_ids(path.read_text(), str(path))


def describe_image_list(spec: str | Path, ids: list[int]) -> dict:
    """What a record keeps of the list: where from, how many ids, their digest, and whether it is COCO20k."""
    digest = ids_digest(ids)
    return {"source": f"{COCO20K} (shipped: LOST's coco_20k_filenames.txt)" if isinstance(spec, str) and
            spec == COCO20K else str(spec), "images": len(ids), "ids_sha256": digest,
            "coco20k": digest == coco20k_digest()}


def _parse_ids(text: str, where: str) -> list[int]:
    ids: list[int] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        if s.isdigit():
            ids.append(int(s))
            continue
        stem = s.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        tail = stem.rsplit("_", 1)[-1]
        if "." not in s.rsplit("/", 1)[-1] or not tail.isdigit():
            raise InputError(f"{where}:{line_no}: expected a file name like train2014/COCO_train2014_000000560992.jpg "
                             f"or an integer id, got {s!r}")
        ids.append(int(tail))
    if not ids:
        raise InputError(f"{where}: image list is empty")
    if len(set(ids)) != len(ids):
        raise InputError(f"{where}: image ids repeat")
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
