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
from functools import lru_cache

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
            avg = st["canvas"].div_(st["count"])[None]  # in place: the canvas is this image's alone
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


def interp_matrix(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """[n_out, n_in]: 1-D linear interpolation (align_corners=False) as a matrix, read off F.interpolate
    applied to the identity; bilinear resizing is this matrix on each axis."""
    eye = torch.eye(n_in, device=device)[None]  # [1, n_in channels, n_in samples]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].t().contiguous()


@lru_cache(maxsize=64)
def _axis_operator_cached(length: int, out_len: int, window: int | None, stride: int | None, grid: int,
                          device: str) -> torch.Tensor:
    return axis_operator(length, out_len, window, stride, grid, device)[0]


def axis_operator(length: int, out_len: int, window: int | None, stride: int | None, grid: int,
                  device=None) -> tuple[torch.Tensor, list[int]]:
    """One axis of the sliding-window assembly as one matrix [out_len, windows * grid], and the window starts.

    Each window's `grid` patch logits are upsampled to `window` pixels, summed where windows overlap,
    divided by the number of windows covering the pixel, then resized to `out_len`. All of it is linear
    per axis, and the window count is a product of a row count and a column count (windows form a grid),
    so the 2-D assembly of `iter_slide_logits` equals `Y @ G @ X.T` per query, G being the patch logits
    of all windows tiled [rows * grid, cols * grid]."""
    if window is None:
        window, stride = length, length
    if length < window:
        raise ValueError(f"an image side of {length} pixels is shorter than the {window}-pixel window")
    starts = sorted({y1 for y1, _, _, _ in window_positions(length, 1, window, stride)})
    up = interp_matrix(grid, window, device)
    canvas = torch.zeros(length, len(starts) * grid, device=device)
    count = torch.zeros(length, 1, device=device)
    for k, s in enumerate(starts):
        canvas[s:s + window, k * grid:(k + 1) * grid] += up
        count[s:s + window] += 1
    return interp_matrix(length, out_len, device) @ (canvas / count), starts


def iter_slide_logits_separable(
    images: Iterable[torch.Tensor],
    dense_fn: DenseFn,
    out_sizes: Iterable[tuple[int, int] | None] | None = None,
    window: int | None = 224,
    stride: int | None = 112,
    batch_size: int = 32,
) -> Iterator[torch.Tensor]:
    """`iter_slide_logits` for images at least one window large, assembled with two small matrices per image
    (`axis_operator`) instead of a full-resolution canvas per query: the per-window upsampling, the
    overlap sums and the first of the two resizes disappear (measured: most of the time outside the tower)."""
    sizes_iter = iter(out_sizes) if out_sizes is not None else None
    pending: list[dict] = []
    queue: list[tuple[dict, int, int, tuple[int, int, int, int]]] = []

    buf: list[torch.Tensor] = []  # one window batch, reused (a fresh 20 MB tensor per batch costs page faults)

    def run(batch) -> None:
        first = batch[0][0]["image"]
        y1, x1, y2, x2 = batch[0][3]
        shape = (len(batch), first.shape[0], y2 - y1, x2 - x1)
        if not buf or buf[0].shape[1:] != shape[1:] or buf[0].shape[0] < shape[0] or buf[0].device != first.device:
            buf[:] = [first.new_empty((max(shape[0], batch_size), *shape[1:]))]
        crops = buf[0][:len(batch)]
        for k, (st, _, _, (y1, x1, y2, x2)) in enumerate(batch):
            crops[k].copy_(st["image"][:, y1:y2, x1:x2])
        grids = dense_fn(crops)
        if grids.ndim != 4 or grids.shape[0] != len(batch) or grids.shape[-1] != grids.shape[-2]:
            raise ValueError(f"dense_fn returned shape {tuple(grids.shape)} for {len(batch)} windows")
        g = grids.shape[-1]
        for k, (st, i, j, _) in enumerate(batch):
            if st["tiles"] is None:
                st["tiles"] = grids.new_zeros((grids.shape[1], st["rows"] * g, st["cols"] * g), dtype=torch.float32)
                st["grid"] = g
            st["tiles"][:, i * g:(i + 1) * g, j * g:(j + 1) * g] = grids[k]
            st["left"] -= 1

    def finished() -> Iterator[torch.Tensor]:
        while pending and pending[0]["left"] == 0:
            st = pending.pop(0)
            H, W = st["image"].shape[-2:]
            oh, ow = st["size"] or (H, W)
            g, dev = st["grid"], st["tiles"].device
            ymat = _axis_operator_cached(H, oh, window, stride, g, str(dev))  # images share sizes
            xmat = _axis_operator_cached(W, ow, window, stride, g, str(dev))
            yield torch.matmul(ymat, torch.matmul(st["tiles"], xmat.t()))

    for image in images:
        if image.ndim != 3:
            raise ValueError(f"images are [3, H, W] tensors, got shape {tuple(image.shape)}")
        size = next(sizes_iter) if sizes_iter is not None else None
        H, W = image.shape[-2:]
        win_h, win_w = (window, window) if window else (H, W)
        if H < win_h or W < win_w:
            raise ValueError(f"image {H}x{W} is smaller than the {window}-pixel window")
        rows = sorted({y1 for y1, _, _, _ in window_positions(H, 1, win_h, stride or win_h)})
        cols = sorted({y1 for y1, _, _, _ in window_positions(W, 1, win_w, stride or win_w)})
        st = {"image": image, "size": tuple(size) if size is not None else None, "tiles": None,
              "rows": len(rows), "cols": len(cols), "left": len(rows) * len(cols)}
        pending.append(st)
        queue.extend((st, i, j, (y, x, y + win_h, x + win_w)) for i, y in enumerate(rows) for j, x in enumerate(cols))
        while len(queue) >= batch_size:
            run(queue[:batch_size])
            del queue[:batch_size]
            yield from finished()
    if queue:
        run(queue)
        queue.clear()
    yield from finished()
