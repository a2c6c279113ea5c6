"""Class labels: folder wnids (sorted-wnid order, as ImageNet), meta/val.txt, or the boxes' class names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .boxes import Annotation
from .images import ImageRecord


@dataclass
class Labels:
    classes: list[str]  # class names (wnids where known), index = label
    labels: list[int]  # per record, -1 when unknown
    source: str


def _text(path: Path) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def read_val_txt(path: Path) -> dict[str, int]:
    """ImageNet devkit style: `ILSVRC2012_val_00000001.JPEG 65` per line."""
    out: dict[str, int] = {}
    for n, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise InputError(f"{path}:{n}: expected '<file name> <integer label>', got {line!r}")
        out[Path(parts[0]).stem] = int(parts[1])
    return out


def read_classes_tsv(path: Path) -> list[str]:
    """meta/classes.tsv: `label<TAB>wnid[<TAB>name]` per line."""
    rows = [ln.split("\t") for ln in _text(path).splitlines() if ln.strip()]
    try:
        rows.sort(key=lambda r: int(r[0]))
        return [r[1] for r in rows]
    except (ValueError, IndexError):
        raise InputError(f"{path}: expected lines '<label>\\t<wnid>[\\t<name>]'") from None


def class_names(root: Path) -> dict[str, str]:
    """wnid -> human name from meta/classes.tsv (third column), when present."""
    path = Path(root) / "meta" / "classes.tsv"
    if not path.exists():
        return {}
    return {r[1]: r[2] for r in (ln.split("\t") for ln in _text(path).splitlines()) if len(r) >= 3}


def resolve_labels(root: Path, records: list[ImageRecord], annotations: dict[str, Annotation] | None) -> Labels:
    root = Path(root)
    if all(r.wnid for r in records):
        train = root / "train"
        try:
            wnids = sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
        except OSError as e:
            raise InputError(f"{train}: cannot list the class folders ({e.strerror or e})") from None
        classes = sorted(set(wnids) | {r.wnid for r in records})  # type: ignore[misc]
        idx = {w: i for i, w in enumerate(classes)}
        return Labels(classes, [idx[r.wnid] for r in records], "class folders (sorted wnids)")  # type: ignore[index]
    val_txt = root / "meta" / "val.txt"
    if val_txt.exists():
        mapping = read_val_txt(val_txt)
        tsv = root / "meta" / "classes.tsv"
        n = max(mapping.values(), default=-1) + 1
        classes = read_classes_tsv(tsv) if tsv.exists() else [str(i) for i in range(n)]
        return Labels(classes, [mapping.get(r.image_id, -1) for r in records], str(val_txt))
    if annotations:
        names = [annotations[r.image_id].boxes[0].name if r.image_id in annotations and annotations[r.image_id].boxes
                 else None for r in records]
        classes = sorted({n for n in names if n})
        idx = {w: i for i, w in enumerate(classes)}
        return Labels(classes, [idx[n] if n else -1 for n in names], "box class names")
    return Labels([], [-1] * len(records), "none")
