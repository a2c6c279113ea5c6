"""Labelled image sets for recognition evaluators: ImageNet splits, ImageFolder roots, CSV lists.

Class indices always come from the TRAINING side (sorted class names, the ImageNet wnid order), and the
test side is mapped through them; a test class unknown to training is an error, never a new index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .images import check_root, index_images, scan_images
from .labels import read_classes_tsv, read_val_txt


@dataclass
class LabeledImages:
    paths: list[Path]
    ids: list[str]
    names: list[str]  # class name per image (wnid, folder name or CSV label)
    source: str
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) that could not be read

    def __len__(self) -> int:
        return len(self.paths)

    def labels(self, classes: list[str]) -> np.ndarray:
        idx = {c: i for i, c in enumerate(classes)}
        unknown = sorted({n for n in self.names if n not in idx})
        if unknown:
            raise InputError(f"{self.source}: classes not present in the training set: {', '.join(unknown[:5])}"
                             + (" ..." if len(unknown) > 5 else ""))
        return np.array([idx[n] for n in self.names], dtype=np.int64)

    def subset(self, keep: np.ndarray) -> LabeledImages:
        return LabeledImages([self.paths[i] for i in keep], [self.ids[i] for i in keep],
                             [self.names[i] for i in keep], self.source, list(self.unreadable))


def from_imagenet(root: Path, split: str) -> LabeledImages:
    """`root/<split>/<wnid>/*.JPEG`, or a flat val folder labelled by meta/val.txt (+ meta/classes.tsv).

    Files and folders that could not be read are listed in `unreadable`, for the caller to report."""
    unreadable: list[tuple[str, str]] = []
    records = index_images(root, split, unreadable=unreadable)
    if all(r.wnid for r in records):
        names = [r.wnid for r in records]
    else:
        val_txt = Path(root) / "meta" / f"{split}.txt"
        if not val_txt.exists():
            raise InputError(f"{root}/{split}: images are not in class folders and {val_txt} does not exist")
        mapping = read_val_txt(val_txt)
        tsv = Path(root) / "meta" / "classes.tsv"
        classes = read_classes_tsv(tsv) if tsv.exists() else None
        names = []
        for r in records:
            if r.image_id not in mapping:
                raise InputError(f"{val_txt}: no label for {r.relpath}")
            label = mapping[r.image_id]
            names.append(classes[label] if classes else str(label))
    return LabeledImages([r.path for r in records], [r.image_id for r in records], names, f"{root}/{split}",
                         unreadable)


def from_folder(root: Path) -> LabeledImages:
    """torchvision ImageFolder layout: root/<class>/<image> (unreadable files and folders in `unreadable`)."""
    root = check_root(root, "image folder")
    unreadable: list[tuple[str, str]] = []
    files = [p for p, folder in scan_images(root, unreadable) if folder is not None]
    if not files:
        more = f"; {len(unreadable)} could not be read, first {unreadable[0][0]}" if unreadable else ""
        raise InputError(f"{root}: no images in <class>/<image> sub-folders{more}")
    return LabeledImages(files, [str(p.relative_to(root).with_suffix("")) for p in files],
                         [p.parent.name for p in files], str(root), unreadable)


def from_csv(path: Path) -> LabeledImages:
    """CSV with columns `path,label`; relative paths are relative to the CSV's folder."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable CSV ({e})") from None
    if not {"path", "label"} <= set(df.columns):
        raise InputError(f"{path}: expected columns path,label; found {list(df.columns)}")
    paths = [Path(p) if Path(p).is_absolute() else path.parent / p for p in df["path"]]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InputError(f"{path}: {len(missing)} listed images do not exist (first: {missing[0]})")
    return LabeledImages(paths, [str(p) for p in df["path"]], list(df["label"]), str(path))


def load_labeled(spec: str | Path, imagenet_split: str | None = None) -> LabeledImages:
    """A CSV file, an ImageFolder root, or (with imagenet_split) an ImageNet root's split."""
    p = Path(spec)
    if imagenet_split is not None:
        return from_imagenet(p, imagenet_split)
    if p.suffix.lower() == ".csv":
        return from_csv(p)
    return from_folder(p)


def class_list(train: LabeledImages) -> list[str]:
    """Training classes in sorted order (numeric order when every name is an integer)."""
    names = set(train.names)
    if all(n.lstrip("-").isdigit() for n in names):
        return [str(i) for i in sorted(int(n) for n in names)]
    return sorted(names)


def few_shot(data: LabeledImages, per_class: int, seed: int) -> LabeledImages:
    """A seeded subset with at most `per_class` images of every class (deterministic order kept)."""
    rng = np.random.default_rng(seed)
    names = np.array(data.names)
    keep = []
    for c in sorted(set(data.names)):
        idx = np.flatnonzero(names == c)
        keep.extend(rng.choice(idx, size=min(per_class, idx.size), replace=False).tolist())
    return data.subset(np.array(sorted(keep), dtype=np.int64))
