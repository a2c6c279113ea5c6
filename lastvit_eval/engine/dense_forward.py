"""The dense forward for training-free zero-shot segmentation: images + labels in, confusion counts out.

Per image (decoded in DataLoader workers): the protocol's keep-ratio resize, CLIP normalization; then
224x224 windows with stride 112, windows of consecutive images batched together through the tower
(`segmentation.sliding.iter_slide_logits_separable`), dense patch embeddings (`segmentation.dense`, plain or
MaskCLIP), cosine with the text classifier, overlapping window logits averaged, upsampled to the label
map, SCLIP's post-processing to a label map, and the confusion counts accumulated on the device
(`segmentation.miou.SegScores`: one bincount per image, one transfer at the end).

Why the engine and not a tap: label maps and logit canvases are ragged and large (171 x H x W per image
on COCO-Stuff), so nothing per pixel is kept or cached; what leaves here is per image and per class
(intersection, label area, predicted area) plus a few downsized examples for the picture. The evaluator
turns those into metrics and never sees a model or an image file. Predicted maps are written here, as
they are produced (`save_predictions`), because keeping them for a later writer would hold the whole
dataset's maps in memory.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..errors import InputError
from ..models.base import LoadedModel
from ..segmentation.datasets import LabelDecoder, SegSample, read_label
from ..segmentation.dense import cosine_logits, dense_embeddings, labels_from_logits
from ..segmentation.miou import SegScores
from ..segmentation.predictions import write_prediction
from ..segmentation.protocol import prepare_image
from ..segmentation.sliding import iter_slide_logits_separable
from .device import EngineSpec, autocast, resolve_device

EXAMPLE_SIDE = 256  # long side of the images kept for the picture


@dataclass(frozen=True)
class DenseRequest:
    """What an evaluator asks of the dense forward (built from the protocol and its options)."""

    mode: str  # plain | maskclip | value (segmentation.dense.MODES)
    query_class: tuple[int, ...]  # text query -> class id (synonyms share a class)
    num_classes: int
    ignore_index: int
    resize: tuple[int, int] | None
    window: int | None
    stride: int | None
    logit_scale: float
    prob_threshold: float
    area_threshold: float | None = None
    save_predictions: Path | None = None
    examples: int = 4


@dataclass
class DenseOutput:
    """Per-image counts (in `scores`), the order of `ids`, examples for the picture, timings."""

    scores: SegScores
    ids: list[str]
    examples: list[dict] = field(default_factory=list)  # id, image [h, w, 3] uint8, pred, label [h, w]
    seconds: float = 0.0
    backbone_seconds: float = 0.0  # inside the tower's forward (dense embeddings), device-synchronized
    windows: int = 0
    device: str = "cpu"
    saved: int = 0

    def info(self) -> dict:
        return {"images": len(self.ids), "windows": self.windows, "device": self.device,
                "seconds": round(self.seconds, 3), "backbone_seconds": round(self.backbone_seconds, 3),
                "images_per_second": round(len(self.ids) / self.seconds, 3) if self.seconds else None,
                "share_outside_backbone": round(1 - self.backbone_seconds / self.seconds, 4) if self.seconds else None,
                "predictions_written": self.saved}


class _SegImages(Dataset):
    """(position, normalized resized image, decoded label, example thumbnail or None, error or None)."""

    def __init__(self, samples: Sequence[SegSample], decoder: LabelDecoder, resize, mean, std, examples: int) -> None:
        self.samples, self.decoder, self.resize = list(samples), decoder, resize
        self.mean, self.std, self.examples = mean, std, examples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        try:
            with Image.open(s.image) as im:
                im = im.convert("RGB")
                img = prepare_image(im, self.resize, self.mean, self.std)
                thumb = None
                if i < self.examples:
                    small = im.copy()
                    small.thumbnail((EXAMPLE_SIDE, EXAMPLE_SIDE))
                    thumb = np.asarray(small)
            label = torch.from_numpy(read_label(s.label, self.decoder))
        except InputError as e:
            return i, None, None, None, str(e)
        except (OSError, ValueError) as e:
            return i, None, None, None, f"{s.image}: cannot decode ({e.__class__.__name__}: {e})"
        if tuple(label.shape) != tuple(np.asarray(im).shape[:2]):
            return i, None, None, None, f"{s.label}: label size {tuple(label.shape)} differs from its image"
        return i, img, label, thumb, None


def _one(item):
    return item


PREFETCH = 3  # images decoded ahead by the decode thread when there are no worker processes


def _threaded(data: Dataset, ahead: int):
    """Decode in one background thread, a few images ahead, in order. PIL decoding and torch's resize
    release the GIL, so this overlaps with the tower where a worker process would not pay off (2-core
    CPUs: the engine's default is no worker process)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="seg-decode") as pool:
        futures: deque = deque()
        for i in range(len(data)):
            futures.append(pool.submit(data.__getitem__, i))
            if len(futures) > ahead:
                yield futures.popleft().result()
        while futures:
            yield futures.popleft().result()


def segment(model: LoadedModel, samples: Sequence[SegSample], decoder: LabelDecoder, text: np.ndarray,
            request: DenseRequest, engine: EngineSpec, progress: bool = False, workers: int | None = None
            ) -> DenseOutput:
    """Score `samples` (in order). `text`: the classifier [embed_dim, queries], open_clip's layout."""
    from .progress import image_progress
    from .runner import default_workers

    t0 = time.perf_counter()
    device = resolve_device(engine.device)
    visual = model.backbone.clip.visual.to(device).eval()
    text_q = torch.as_tensor(np.asarray(text, dtype=np.float32)).t().contiguous().to(device)
    if text_q.shape[0] != len(request.query_class):
        raise InputError(f"text classifier has {text_q.shape[0]} queries, the protocol {len(request.query_class)}")
    t = model.transform
    data = _SegImages(samples, decoder, request.resize, t.mean, t.std, request.examples)
    n_workers = default_workers(device.type) if workers is None and engine.workers is None else (
        workers if workers is not None else engine.workers)
    if n_workers > 0:
        loader = DataLoader(data, batch_size=None, shuffle=False, num_workers=n_workers, collate_fn=_one,
                            pin_memory=device.type == "cuda", prefetch_factor=4, persistent_workers=False)
    else:
        loader = _threaded(data, PREFETCH)
    out = DenseOutput(SegScores(request.num_classes, request.ignore_index, device=device), [], device=str(device))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def dense_fn(windows: torch.Tensor) -> torch.Tensor:
        sync()
        t1 = time.perf_counter()
        with torch.inference_mode(), autocast(device, engine.dtype):
            emb = dense_embeddings(visual, windows, request.mode)
        sync()
        out.backbone_seconds += time.perf_counter() - t1
        out.windows += len(windows)
        with torch.inference_mode():
            logits = cosine_logits(emb, text_q)
        # checked here, on the patch grid, not on the full-resolution map (a finite grid upsamples finitely)
        if not bool(torch.isfinite(logits).all()):
            names = ", ".join(str(samples[p[0]].image) for p in list(pending)[:3])
            raise InputError(f"{names}: the forward pass gave non-finite values for a window of one of these "
                             "images; the checkpoint or the --dtype overflows, so no metric is computed")
        return logits

    pending: deque = deque()  # (position, label, thumbnail) of images handed to the sliding windows

    def images():
        for i, img, label, thumb, err in loader:
            if err is not None:
                raise InputError(err)
            pending.append((i, label, thumb))
            yield img.to(device, non_blocking=True)

    sizes = (tuple(pending[-1][1].shape) for _ in iter(int, 1))  # the label of the image just handed over
    save = request.save_predictions
    with image_progress(progress) as bar, torch.inference_mode():
        task = bar.add_task("zero-shot segmentation", total=len(data), rate="")
        for logits in iter_slide_logits_separable(images(), dense_fn, sizes, request.window, request.stride,
                                                  engine.batch_size):
            i, label, thumb = pending.popleft()
            s = samples[i]
            pred = labels_from_logits(logits, request.query_class, request.logit_scale, request.prob_threshold,
                                      request.area_threshold)
            label = label.to(device, non_blocking=True)
            out.scores.update(pred, label, check=False)  # labels checked when decoded; pred from query_class
            out.ids.append(s.id)
            if save is not None:
                write_prediction(Path(save) / s.label.name, pred.cpu().numpy())
                out.saved += 1
            if thumb is not None:
                out.examples.append(_example(s.id, thumb, pred, label))
            bar.update(task, advance=1)
    out.seconds = time.perf_counter() - t0
    return out


def _example(image_id: str, thumb: np.ndarray, pred: torch.Tensor, label: torch.Tensor) -> dict:
    """The prediction and label at the thumbnail's size (nearest), for the picture."""
    h, w = thumb.shape[:2]

    def small(m: torch.Tensor) -> np.ndarray:
        m = torch.nn.functional.interpolate(m[None, None].float(), size=(h, w), mode="nearest")[0, 0]
        return m.long().cpu().numpy()

    return {"id": image_id, "image": thumb, "pred": small(pred), "label": small(label)}
