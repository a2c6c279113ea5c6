"""The point-in-box dataset: images, boxes, labels, the paper's filter, and a kept/dropped report."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..geometry import HitRule, mask_patch_targets, patch_targets
from .boxes import Annotation, find_boxes, load_boxes
from .filters import FilterSpec, apply_filter
from .images import ImageRecord, index_images
from .labels import resolve_labels
from .masks import MaskSource, mask_to_crop


@dataclass
class PibData:
    records: list[ImageRecord]  # kept, in deterministic order
    sizes: list[tuple[int, int]]  # (w, h) of each kept image
    annotations: dict[str, Annotation]
    labels: list[int]
    classes: list[str]
    boxes_source: str
    report: dict = field(default_factory=dict)  # found, kept, dropped per reason
    dropped: dict[str, list[str]] = field(default_factory=dict)
    masks: MaskSource | None = None  # when set, targets come from segmentation masks

    def class_of(self, i: int) -> str | None:
        label = self.labels[i]
        if 0 <= label < len(self.classes):
            return self.classes[label]
        return None


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:  # header only
        return im.size


def load_pib_data(
    root: Path, boxes: Path | None, spec: FilterSpec, on_bad_image: str = "skip", split: str = "val",
    masks: Path | None = None,
) -> PibData:
    records = index_images(root, split)
    mask_source = MaskSource(masks) if masks else None
    if mask_source is not None:
        box_path = Path(masks)  # type: ignore[arg-type]
        annotations = mask_source.annotations([r.image_id for r in records])
    else:
        box_path = Path(boxes) if boxes else find_boxes(root)
        annotations = load_boxes(box_path, [r.image_id for r in records])
    if not any(r.image_id in annotations for r in records):
        raise InputError(f"{box_path}: no boxes match any of the {len(records)} images under {root}")
    dropped: dict[str, list[str]] = {}
    readable, sizes = [], []
    for r in records:
        try:
            sizes.append(image_size(r.path))
            readable.append(r)
        except (OSError, SyntaxError, ValueError) as e:
            if on_bad_image == "fail":
                raise InputError(f"{r.path}: unreadable image ({e}); use --on-bad-image skip to skip it") from None
            dropped.setdefault("unreadable image", []).append(r.image_id)
    kept_idx, filtered = apply_filter([r.image_id for r in readable], annotations, sizes, spec)
    dropped.update(filtered)
    kept = [readable[i] for i in kept_idx]
    kept_sizes = [sizes[i] for i in kept_idx]
    if not kept:
        summary = ", ".join(f"{k}: {len(v)}" for k, v in dropped.items())
        raise InputError(f"{root}: all {len(records)} images were filtered out ({summary})")
    labels = resolve_labels(root, kept, annotations)
    return PibData(
        records=kept,
        sizes=kept_sizes,
        annotations=annotations,
        labels=labels.labels,
        classes=labels.classes,
        boxes_source=str(box_path),
        report={"found": len(records), "kept": len(kept), "labels": labels.source},
        dropped=dropped,
        masks=mask_source,
    )


def targets_for(
    data: PibData, resize: int, crop: int, patch: int, rule: HitRule, fg_fraction: float = 0.5,
    rows: list[int] | None = None,
) -> np.ndarray:
    """[n_images, n_patches] bool: which patches count as inside each image's box(es) or mask
    (for the records `rows` only, when given)."""
    if rows is not None:
        data = replace(data, records=[data.records[i] for i in rows], sizes=[data.sizes[i] for i in rows])
    if data.masks is not None:
        return np.stack(
            [
                mask_patch_targets(mask_to_crop(data.masks.mask(r.image_id, size), resize, crop), patch, rule,
                                   fg_fraction)
                for r, size in zip(data.records, data.sizes, strict=True)
            ]
        )
    return np.stack(
        [
            patch_targets([b.as_tuple() for b in data.annotations[r.image_id].boxes], w, h, resize, crop, patch, rule,
                          fg_fraction)
            for r, (w, h) in zip(data.records, data.sizes, strict=True)
        ]
    )
