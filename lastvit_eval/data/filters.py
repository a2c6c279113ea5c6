"""The paper's point-in-box filter (exactly one object, box area < 25% of the image) with a report."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass

from .boxes import Annotation


@dataclass(frozen=True)
class FilterSpec:
    single_object: bool = True
    max_box_area: float | None = 0.25  # fraction of the image area; None disables

    def to_dict(self) -> dict:
        return asdict(self)


# Reasons an annotation cannot be scored against its image (errors under on_bad_annotation="fail").
SIZE_MISMATCH = "annotation size differs from image"
NON_FINITE = "non-finite box coordinate (NaN or inf)"
INVALID_BOX = "invalid box (zero area, inverted or negative)"
OUTSIDE_IMAGE = "box outside the image"


def annotation_problem(ann: Annotation, size: tuple[int, int]) -> tuple[str, str] | None:
    """(reason, detail) when the annotation does not fit the (w, h) image, else None.

    Boxes are pixel-edge coordinates [x0, x1) x [y0, y1) (geometry.py), so x1 == w still lies inside.
    Checked before the paper's filter, so an invalid box never shows up under a misleading reason
    (a box past the image edge as 'box area >= 25%', an inverted one as 'box outside the crop').
    """
    w, h = size
    if ann.size is not None and tuple(ann.size) != (w, h):
        return SIZE_MISMATCH, f"annotation size {ann.size[0]}x{ann.size[1]} differs from the image's {w}x{h}"
    for i, b in enumerate(ann.boxes):
        c = b.as_tuple()
        desc = f"box {i} ({', '.join(f'{v:g}' for v in c)})"
        if not all(math.isfinite(v) for v in c):
            return NON_FINITE, f"{desc} has a non-finite coordinate"
        if min(c) < 0 or b.x1 <= b.x0 or b.y1 <= b.y0:
            return INVALID_BOX, f"{desc} has zero area, is inverted or has a negative coordinate"
        if b.x1 > w or b.y1 > h:
            return OUTSIDE_IMAGE, f"{desc} reaches outside the {w}x{h} image"
    return None


def drop_reason(ann: Annotation | None, size: tuple[int, int], spec: FilterSpec) -> str | None:
    """Why an image is dropped, or None when it is kept."""
    if ann is None:
        return "no annotation"
    if not ann.boxes:
        return "no boxes"
    problem = annotation_problem(ann, size)
    if problem is not None:
        return problem[0]
    if spec.single_object and len(ann.boxes) != 1:
        return "not exactly one object"
    if spec.max_box_area is not None:
        w, h = size
        if max(b.area() for b in ann.boxes) >= spec.max_box_area * w * h:
            return f"box area >= {spec.max_box_area:.0%} of image"
    return None


def apply_filter(
    image_ids: list[str], annotations: dict[str, Annotation], sizes: list[tuple[int, int]], spec: FilterSpec
) -> tuple[list[int], dict[str, list[str]]]:
    """Indices of kept images and, per reason, the dropped image ids."""
    kept: list[int] = []
    dropped: dict[str, list[str]] = {}
    for i, (image_id, size) in enumerate(zip(image_ids, sizes, strict=True)):
        reason = drop_reason(annotations.get(image_id), size, spec)
        if reason is None:
            kept.append(i)
        else:
            dropped.setdefault(reason, []).append(image_id)
    return kept, dropped


def summarize(dropped: dict[str, list[str]]) -> dict[str, int]:
    return dict(Counter({k: len(v) for k, v in dropped.items()}).most_common())
