"""The one forward pass: final normalized tokens -> every requested pooling and tap, in fp32."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import InputError
from ..models.base import LoadedModel
from ..pooling import PoolingSpec, patch_scores, pool
from .dataset import ImageDataset, collate
from .device import EngineSpec, autocast, resolve_device
from .progress import image_progress

TAP_KINDS = ("pooled", "embedding", "patch_scores", "votes", "logits", "patch_tokens")


@dataclass(frozen=True)
class TapRequest:
    """Which arrays to keep from the forward pass; keys are `<tap>/<pooling name>`."""

    poolings: tuple[PoolingSpec, ...]
    taps: frozenset[str]

    def __post_init__(self) -> None:
        unknown = set(self.taps) - set(TAP_KINDS)
        if unknown:
            raise ValueError(f"unknown taps {sorted(unknown)}")


@dataclass
class Features:
    index: np.ndarray  # positions (into the input path list) of the images that were processed
    arrays: dict[str, np.ndarray]  # tap key -> [n, ...], rows aligned with `index`
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, error) of skipped images
    seconds: float = 0.0
    device: str = "cpu"

    @property
    def images_per_second(self) -> float:
        return len(self.index) / self.seconds if self.seconds > 0 else float("nan")


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def forward_taps(model: LoadedModel, x: torch.Tensor, request: TapRequest, dtype: str) -> dict[str, torch.Tensor]:
    """Taps for one normalized batch. Pooling, scores, heads run in fp32 whatever the autocast dtype."""
    bb = model.backbone
    with autocast(x.device, dtype):
        tokens = bb.tokens(x)
    tokens = tokens.float()
    prefix = bb.num_prefix_tokens
    patches = tokens[:, prefix:]
    out: dict[str, torch.Tensor] = {}
    if "patch_tokens" in request.taps:
        out["patch_tokens"] = patches.half()
    for spec in request.poolings:
        p = pool(tokens, prefix, spec)
        name = spec.name
        if "pooled" in request.taps:
            out[f"pooled/{name}"] = p.token
        if "embedding" in request.taps:
            out[f"embedding/{name}"] = bb.project(p.token).float()
        if "patch_scores" in request.taps:
            out[f"patch_scores/{name}"] = patch_scores(patches, p.token)
        if "votes" in request.taps and p.votes is not None:
            out[f"votes/{name}"] = p.votes
        if "logits" in request.taps:
            logits = bb.head(p.token)
            if logits is not None:
                out[f"logits/{name}"] = logits.float()
    return out


def extract(
    model: LoadedModel,
    paths: list[Path],
    request: TapRequest,
    engine: EngineSpec,
    progress: bool = True,
    description: str = "forward",
) -> Features:
    """Run the model over `paths` in order; bad images are skipped (listed) or fail the run."""
    device = resolve_device(engine.device)
    bb = model.backbone.to(device).eval()
    if engine.channels_last:
        bb = bb.to(memory_format=torch.channels_last)
    workers = default_workers() if engine.workers is None else engine.workers
    loader = DataLoader(
        ImageDataset(paths, model.transform),
        batch_size=engine.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    chunks: dict[str, list[torch.Tensor]] = {}
    done: list[torch.Tensor] = []
    bad: list[tuple[str, str]] = []
    t0 = time.perf_counter()
    with image_progress(progress) as bar, torch.inference_mode():
        task = bar.add_task(description, total=len(paths), rate="")
        for idx, batch, errors in loader:
            for i, err in errors:
                if engine.on_bad_image == "fail":
                    raise InputError(f"{paths[i]}: unreadable image ({err}); use --on-bad-image skip to skip it")
                bad.append((str(paths[i]), err))
            if batch is not None:
                x = model.transform.normalize(batch.to(device, non_blocking=True))
                if engine.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                for key, value in forward_taps(model, x, request, engine.dtype).items():
                    chunks.setdefault(key, []).append(value.cpu())
                done.append(idx)
            elapsed = time.perf_counter() - t0
            n_done = sum(len(d) for d in done)
            bar.update(task, advance=len(idx) + len(errors), rate=f"{n_done / max(elapsed, 1e-9):.1f} img/s")
    seconds = time.perf_counter() - t0
    arrays = {k: torch.cat(v).numpy() for k, v in chunks.items()}
    index = torch.cat(done).numpy() if done else np.zeros(0, dtype=np.int64)
    return Features(index=index, arrays=arrays, bad=bad, seconds=seconds, device=str(device))
