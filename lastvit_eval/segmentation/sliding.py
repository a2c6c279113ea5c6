"""Sliding-window inference (mmseg's slide_inference as SCLIP / NACLIP use it), batched across images.

Windows: `h_grids = max(H - crop + stride - 1, 0) // stride + 1` (likewise for W); window (i, j) starts
at (i * stride, j * stride), ends at min(start + crop, H), and is shifted back so it keeps `crop` pixels
where the image allows (`start = max(end - crop, 0)`): the last row/column of windows touches the border.
An image smaller than `crop` gives one window of its own size (no padding, as in SCLIP).

Each window's logits [C, h, w] (patch grid) are upsampled bilinearly (align_corners=False) to the window
size, summed into a [C, H, W] canvas, divided by the per-pixel window count, then upsampled bilinearly to
the label map's size (SCLIP clip_segmentor.py forward_feature / forward_slide).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

DenseFn = Callable[[torch.Tensor], torch.Tensor]  # windows [B, 3, h, w] -> logits [B, C, h', w']


def window_positions(height: int, width: int, window: int = 224, stride: int = 112) -> list[tuple[int, int, int, int]]:
    """(y1, x1, y2, x2) of every window covering an H x W image, row-major."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive, got {window}, {stride}")
    if stride > window:
        raise ValueError(f"stride {stride} > window {window} would leave pixels no window covers")
    h_grids = max(height - window + stride - 1, 0) // stride + 1
    w_grids = max(width - window + stride - 1, 0) // stride + 1
    out = []
    for i in range(h_grids):
        for j in range(w_grids):
            y2, x2 = min(i * stride + window, height), min(j * stride + window, width)
            out.append((max(y2 - window, 0), max(x2 - window, 0), y2, x2))
    return out


def iter_slide_logits(
    images: Iterable[torch.Tensor],
    dense_fn: DenseFn,
    out_sizes: Iterable[tuple[int, int] | None] | None = None,
    window: int | None = 224,
    stride: int | None = 112,
    batch_size: int = 32,
) -> Iterator[torch.Tensor]:
    """Per image (in order), averaged window logits [C, H_out, W_out].

    `images`: normalized [3, H, W] tensors (already resized by the protocol). `out_sizes`: the label
    map's (H, W) per image (None: the image's size). `window=None`: one forward over each whole image
    (NACLIP v2 on VOC). Windows of consecutive images share `dense_fn` batches of up to `batch_size`;
    windows of different shapes (images smaller than the window) go in separate calls. Each image's
    canvas is released as soon as its last window is in, so memory stays bounded for long streams.
    """
    sizes_iter = iter(out_sizes) if out_sizes is not None else None
    pending: list[dict] = []  # images whose windows are not all done, in order
    queue: list[tuple[dict, tuple[int, int, int, int]]] = []  # windows not yet run

    def run(batch: list[tuple[dict, tuple[int, int, int, int]]]) -> None:
        groups: dict[tuple[int, int], list] = {}
        for item in batch:
            y1, x1, y2, x2 = item[1]
            groups.setdefault((y2 - y1, x2 - x1), []).append(item)
        for (h, w), items in groups.items():
            crops = torch.stack([st["image"][:, y1:y2, x1:x2] for st, (y1, x1, y2, x2) in items])
            logits = dense_fn(crops)
            if logits.ndim != 4 or logits.shape[0] != len(items):
                raise ValueError(f"dense_fn returned shape {tuple(logits.shape)} for {len(items)} windows")
            logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
            for k, (st, (y1, x1, y2, x2)) in enumerate(items):
                if st["canvas"] is None:
                    H, W = st["image"].shape[-2:]
                    st["canvas"] = logits.new_zeros((logits.shape[1], H, W))
                    st["count"] = logits.new_zeros((1, H, W))
                st["canvas"][:, y1:y2, x1:x2] += logits[k]
                st["count"][:, y1:y2, x1:x2] += 1
                st["left"] -= 1

    def finished() -> Iterator[torch.Tensor]:
        while pending and pending[0]["left"] == 0:
            st = pending.pop(0)
            avg = (st["canvas"] / st["count"])[None]
            size = st["size"] or tuple(st["image"].shape[-2:])
            if tuple(avg.shape[-2:]) != tuple(size):
                avg = F.interpolate(avg, size=size, mode="bilinear", align_corners=False)
            yield avg[0]

    for image in images:
        if image.ndim != 3:
            raise ValueError(f"images are [3, H, W] tensors, got shape {tuple(image.shape)}")
        size = next(sizes_iter) if sizes_iter is not None else None
        H, W = image.shape[-2:]
        boxes = window_positions(H, W, window, stride) if window else [(0, 0, H, W)]
        st = {"image": image, "size": tuple(size) if size is not None else None, "canvas": None, "count": None,
              "left": len(boxes)}
        pending.append(st)
        queue.extend((st, b) for b in boxes)
        while len(queue) >= batch_size:
            run(queue[:batch_size])
            del queue[:batch_size]
            yield from finished()
    if queue:
        run(queue)
        queue.clear()
    yield from finished()


def slide_logits(
    images: Sequence[torch.Tensor],
    dense_fn: DenseFn,
    out_sizes: Sequence[tuple[int, int] | None] | None = None,
    window: int | None = 224,
    stride: int | None = 112,
    batch_size: int = 32,
) -> list[torch.Tensor]:
    """`iter_slide_logits` as a list."""
    return list(iter_slide_logits(images, dense_fn, out_sizes, window, stride, batch_size))
