"""Image index of an ImageNet-style root: R/<split>/<wnid>/*.JPEG or flat R/<split>/*.JPEG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class ImageRecord:
    image_id: str  # file stem, the key annotations are joined on
    path: Path
    relpath: str  # relative to the dataset root, for manifests
    wnid: str | None  # class folder name, when the layout has one


def index_images(root: Path, split: str = "val") -> list[ImageRecord]:
    """All images under root/split in a deterministic (sorted relative path) order."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: dataset root does not exist")
    base = root / split
    if not base.is_dir():
        if split == "val" and _has_images(root):
            base = root  # a flat folder of images was given directly
        else:
            raise InputError(f"{root}: no '{split}' folder (expected {base}/<wnid>/*.JPEG or {base}/*.JPEG)")
    records = []
    for path in sorted(base.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        rel = path.relative_to(base)
        if len(rel.parts) > 2:
            continue
        wnid = rel.parts[0] if len(rel.parts) == 2 else None
        records.append(ImageRecord(path.stem, path, str(path.relative_to(root)), wnid))
    if not records:
        raise InputError(f"{base}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    seen: dict[str, Path] = {}
    for r in records:
        if r.image_id in seen:
            raise InputError(f"{r.path}: duplicate image id {r.image_id!r} (also {seen[r.image_id]})")
        seen[r.image_id] = r.path
    return records


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file())
