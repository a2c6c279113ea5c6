"""The paper's point-in-box filter (exactly one object, box area < 25% of the image) with a report."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

from .boxes import Annotation


@dataclass(frozen=True)
class FilterSpec:
    single_object: bool = True
    max_box_area: float | None = 0.25  # fraction of the image area; None disables

    def to_dict(self) -> dict:
        return asdict(self)


def drop_reason(ann: Annotation | None, size: tuple[int, int], spec: FilterSpec) -> str | None:
    """Why an image is dropped, or None when it is kept."""
    if ann is None:
        return "no annotation"
    if not ann.boxes:
        return "no boxes"
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
