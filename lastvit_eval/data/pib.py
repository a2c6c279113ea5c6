"""The point-in-box dataset: images, boxes, labels, the paper's filter, and a kept/dropped report."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..geometry import HitRule, mask_patch_targets, patch_targets
from .boxes import Annotation, find_boxes, load_boxes
from .decode import BAD_IMAGE_ERRORS, read_size
from .filters import FilterSpec, annotation_problem, apply_filter
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


UNREADABLE_PATH = "unreadable file or folder"
UNREADABLE_IMAGE = "unreadable image"
TOO_LARGE = "image over PIL's pixel limit"
_CHOICES = ("fail", "skip")


def image_size(path: Path) -> tuple[int, int]:
    """(w, h) from the header only; a file over PIL's pixel limit raises DecompressionBombError."""
    return read_size(path)


def _choice(name: str, value: str) -> None:
    if value not in _CHOICES:
        raise InputError(f"{name} must be 'fail' or 'skip', got {value!r}")


def load_pib_data(
    root: Path, boxes: Path | None, spec: FilterSpec, on_bad_image: str = "skip", split: str = "val",
    masks: Path | None = None, on_bad_annotation: str = "fail",
) -> PibData:
    """Images, their annotations and the paper's filter.

    on_bad_image: unreadable files/folders and undecodable or oversized headers are an error ("fail") or
    dropped with their reason ("skip"). on_bad_annotation: an annotation that does not fit its image
    (size in the file differs from the image's, box outside the image, NaN, inverted or empty box) is
    an error naming the annotation and image files ("fail") or drops that image with its reason ("skip").
    """
    _choice("on_bad_image", on_bad_image)
    _choice("on_bad_annotation", on_bad_annotation)
    dropped: dict[str, list[str]] = {}
    unreadable: list[tuple[str, str]] = []
    records = index_images(root, split, unreadable=unreadable)
    if unreadable:
        if on_bad_image == "fail":
            path, why = unreadable[0]
            raise InputError(f"{path}: {why} ({len(unreadable)} unreadable file(s) or folder(s) under {root}); "
                             "use --on-bad-image skip to skip them")
        dropped[UNREADABLE_PATH] = [p for p, _ in unreadable]
    mask_source = MaskSource(masks) if masks else None
    if mask_source is not None:
        box_path = Path(masks)  # type: ignore[arg-type]
        annotations = mask_source.annotations([r.image_id for r in records])
    else:
        box_path = Path(boxes) if boxes else find_boxes(root)
        annotations = load_boxes(box_path, [r.image_id for r in records])
    if not any(r.image_id in annotations for r in records):
        raise InputError(f"{box_path}: no boxes match any of the {len(records)} images under {root}")
    readable, sizes = [], []
    for r in records:
        try:
            sizes.append(image_size(r.path))
            readable.append(r)
        except Image.DecompressionBombError as e:
            if on_bad_image == "fail":
                raise InputError(f"{r.path}: {TOO_LARGE} ({e}); use --on-bad-image skip to skip it") from None
            dropped.setdefault(TOO_LARGE, []).append(r.image_id)
        except BAD_IMAGE_ERRORS as e:
            if on_bad_image == "fail":
                raise InputError(f"{r.path}: {UNREADABLE_IMAGE} ({e}); use --on-bad-image skip to skip it") from None
            dropped.setdefault(UNREADABLE_IMAGE, []).append(r.image_id)
    if on_bad_annotation == "fail":
        for r, size in zip(readable, sizes, strict=True):
            ann = annotations.get(r.image_id)
            problem = None if ann is None else annotation_problem(ann, size)
            if ann is not None and problem is not None:
                raise InputError(f"{ann.source}: {problem[1]} ({r.path}); "
                                 "use --on-bad-annotation skip to drop such images")
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
    rows: list[int] | None = None, kind: str = "resize-crop",
) -> np.ndarray:
    """[n_images, n_patches] bool: which patches count as inside each image's box(es) or mask
    (for the records `rows` only, when given), through the model's transform `kind` (geometry.input_map)."""
    if rows is not None:
        data = replace(data, records=[data.records[i] for i in rows], sizes=[data.sizes[i] for i in rows])
    if data.masks is not None:
        return np.stack(
            [
                mask_patch_targets(mask_to_crop(data.masks.mask(r.image_id, size), resize, crop, kind), patch, rule,
                                   fg_fraction)
                for r, size in zip(data.records, data.sizes, strict=True)
            ]
        )
    return np.stack(
        [
            patch_targets([b.as_tuple() for b in data.annotations[r.image_id].boxes], w, h, resize, crop, patch, rule,
                          fg_fraction, kind)
            for r, (w, h) in zip(data.records, data.sizes, strict=True)
        ]
    )
