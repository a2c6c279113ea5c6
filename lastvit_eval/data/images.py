"""Image index of an ImageNet-style root: R/<split>/<wnid>/*.JPEG or flat R/<split>/*.JPEG.

Folders and files that cannot be read are reported (path, reason), never skipped in silence: a class
folder without read permission would otherwise just shrink the dataset.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..errors import InputError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}

T = TypeVar("T")


@dataclass(frozen=True)
class ImageRecord:
    image_id: str  # file stem, the key annotations are joined on
    path: Path
    relpath: str  # relative to the dataset root, for manifests
    wnid: str | None  # class folder name, when the layout has one


def first_n(items: list[T], limit: int | None) -> list[T]:
    """The first `limit` items; a non-positive limit is an error (a Python slice would count from the end)."""
    if limit is None:
        return items
    if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1:
        raise InputError(f"limit must be a positive number of images, got {limit!r}")
    return items[:limit]


def check_root(root: Path, what: str = "dataset root") -> Path:
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: {what} does not exist")
    if not root.is_dir():
        raise InputError(f"{root}: {what} is a file, not a folder")
    return root


def _entries(folder: Path, unreadable: list) -> list[os.DirEntry] | None:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        unreadable.append((str(folder), f"cannot list folder ({e.strerror or e})"))
        return None


def _image_file(entry: os.DirEntry, unreadable: list) -> bool:
    """An image file we can open; broken links and files without read permission are reported."""
    if os.path.splitext(entry.name)[1].lower() not in IMAGE_SUFFIXES:
        return False
    try:
        if not entry.is_file():
            if entry.is_symlink():
                unreadable.append((entry.path, "broken symbolic link"))
            return False
    except OSError as e:
        unreadable.append((entry.path, f"cannot stat ({e.strerror or e})"))
        return False
    if not os.access(entry.path, os.R_OK):
        unreadable.append((entry.path, "no read permission"))
        return False
    return True


def scan_images(base: Path, unreadable: list) -> list[tuple[Path, str | None]]:
    """(path, class folder or None) for base/*.<img> and base/<folder>/*.<img>, in sorted path order."""
    top = _entries(base, unreadable)
    if top is None:
        raise InputError(f"{base}: {unreadable[-1][1]}")
    out: list[tuple[Path, str | None]] = []
    for e in top:
        try:
            is_dir = e.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            for f in _entries(Path(e.path), unreadable) or []:
                if _image_file(f, unreadable):
                    out.append((Path(f.path), e.name))
        elif _image_file(e, unreadable):
            out.append((Path(e.path), None))
    return out


def index_images(
    root: Path, split: str = "val", unreadable: list | None = None, limit: int | None = None
) -> list[ImageRecord]:
    """All images under root/split in a deterministic (sorted relative path) order, at most `limit`.

    Unreadable files and folders are appended to `unreadable` as (path, reason); without that list
    they are an error, so that nothing goes missing unnoticed.
    """
    root = check_root(root)
    base = root / split
    if not base.is_dir():
        if split == "val" and _has_images(root):
            base = root  # a flat folder of images was given directly
        else:
            raise InputError(f"{root}: no '{split}' folder (expected {base}/<wnid>/*.JPEG or {base}/*.JPEG)")
    bad: list[tuple[str, str]] = []
    records = [ImageRecord(p.stem, p, str(p.relative_to(root)), wnid) for p, wnid in scan_images(base, bad)]
    if bad and unreadable is None:
        raise InputError(f"{bad[0][0]}: {bad[0][1]} ({len(bad)} unreadable file(s) or folder(s) under {base})")
    if unreadable is not None:
        unreadable.extend(bad)
    if not records:
        more = f"; {len(bad)} file(s) or folder(s) could not be read, first {bad[0][0]}" if bad else ""
        raise InputError(f"{base}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}{more})")
    seen: dict[str, Path] = {}
    for r in records:
        if r.image_id in seen:
            raise InputError(f"{r.path}: duplicate image id {r.image_id!r} (also {seen[r.image_id]})")
        seen[r.image_id] = r.path
    return first_n(records, limit)


def _has_images(folder: Path) -> bool:
    try:
        return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file())
    except OSError as e:
        raise InputError(f"{folder}: cannot list folder ({e.strerror or e})") from None
