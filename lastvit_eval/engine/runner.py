"""The batched forward loop: device placement, OOM backoff, optional torch.compile, CPU or GPU decode.

Set up lazily, so a run whose features all come from the store never moves the model to the device.
The caller hands over chunks (lists of positions); batches never cross a chunk, and a chunk is handed
back as soon as its last image is done, so the caller can write it to the feature store before the
next one starts (what makes `kill -9` resumable). The forward function is a parameter (default:
`taps.forward_taps`), which keeps this module below the taps and lets tests inject failures.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import InputError
from ..models.base import LoadedModel
from .dataset import EncodedDataset, ImageDataset, collate, collate_encoded
from .device import EngineSpec, resolve_device, with_low_precision_linears
from .full_res import is_full_res, stack_rows
from .host_memory import keep_freed_memory
from .progress import console, image_progress
from .taps import check_finite, forward_taps

ForwardFn = Callable[..., dict[str, torch.Tensor]]


@dataclass
class Chunk:
    """One chunk's rows: positions (into the path list) of the images that decoded, their taps, bad files."""

    index: np.ndarray  # int64 [m], positions into the caller's path list
    arrays: dict[str, np.ndarray]
    bad: list[tuple[int, str]] = field(default_factory=list)  # (position, error)


def default_workers(device_type: str = "cpu") -> int:
    """Decode processes: none on a CPU run with 2 or fewer cores, where a worker competes with the forward
    for the same cores (measured: bf16 pipeline at 80% of the bare forward with 0 workers, 64% with 2);
    otherwise min(4, cores)."""
    import os

    cores = os.cpu_count() or 1
    if device_type == "cpu" and cores <= 2:
        return 0
    return min(4, cores)


THREAD_DECODE = True  # with 0 decode processes, decode the next batch in a thread (benchmarks switch it off)


def prefetched(batches: Iterable, depth: int = 1) -> Iterator:
    """Yield from `batches`, computing the next `depth` items in a thread while the caller works on this one.

    With no decode process (2-core CPUs), decoding on the main thread leaves a core idle; PIL decodes and
    resizes with the GIL released, so a thread overlaps it with the forward at no IPC cost."""
    from concurrent.futures import ThreadPoolExecutor

    end = object()
    it = iter(batches)
    with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool:
        pending = [pool.submit(next, it, end) for _ in range(depth)]
        while True:
            item = pending.pop(0).result()
            if item is end:
                return
            pending.append(pool.submit(next, it, end))
            yield item


class BatchRunner:
    """Forward passes for one (model, request, engine); `info` records what happened (backoffs, compile)."""

    def __init__(self, model: LoadedModel, request, engine: EngineSpec, forward_fn: ForwardFn = forward_taps,
                 should_stop: Callable[[], str | None] | None = None) -> None:
        self.model = model
        self.forward_fn = forward_fn
        self.should_stop = should_stop  # polled between batches: a message ends the run (another rank failed)
        self.request = request
        self.engine = engine
        self.device = resolve_device(engine.device)
        if engine.decode not in ("cpu", "gpu"):
            raise InputError(f"--decode {engine.decode!r}: use cpu or gpu")
        if engine.decode == "gpu" and self.device.type != "cuda":
            raise InputError(f"--decode gpu needs a CUDA device, got {self.device}")
        self.micro = engine.batch_size  # current sub-batch size; halves on CUDA OOM
        self.ready = False
        self.compiled = False
        self.info: dict = {"batch_size": engine.batch_size, "oom_backoffs": [], "compile": "off"}
        self.seconds = 0.0

    def setup(self) -> None:
        if self.ready:
            return
        self.info["freed_host_memory"] = keep_freed_memory()  # no page faults for every batch's activations
        bb = self.model.backbone.to(self.device).eval()
        if self.engine.channels_last:
            bb.to(memory_format=torch.channels_last)
        if self.device.type == "cpu" and self.engine.dtype == "bf16":
            # the same numbers as autocast over `bb`, without re-casting the weights every batch; heads and
            # projections (forward_taps, fp32) still use `bb`
            bb = with_low_precision_linears(bb, self.engine.dtype)
        self.eager_tokens = bb.tokens
        self.tokens_fn = bb.tokens
        if self.engine.compile:
            try:
                self.tokens_fn = torch.compile(bb.tokens)
                self.compiled = True
                self.info["compile"] = "on"
            except Exception as e:  # noqa: BLE001 - any compile failure falls back to eager
                self._compile_failed(e)
        self.ready = True

    def _compile_failed(self, e: BaseException) -> None:
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        warnings.warn(f"torch.compile failed, running eager instead ({msg})", RuntimeWarning, stacklevel=3)
        self.info["compile"] = f"failed, eager fallback ({msg[:200]})"
        self.tokens_fn = self.eager_tokens
        self.compiled = False

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled:
            try:
                return self.tokens_fn(x)
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - compile errors surface on the first call
                self._compile_failed(e)
        return self.eager_tokens(x)

    def forward(self, batch: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """uint8 [B, 3, H, W] (host or device) -> taps on the host; halves the sub-batch on CUDA OOM.

        Non-finite outputs are an error naming the image (`names`), never a metric."""
        self.setup()
        x = self.model.transform.normalize(batch.to(self.device, non_blocking=True))
        if self.engine.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs: list[dict[str, torch.Tensor]] = []
        i = 0
        while i < len(x):
            b = min(self.micro, len(x) - i)
            oom = False
            try:
                out = self.forward_fn(self.model, x[i:i + b], self.request, self.engine.dtype, tokens_fn=self._tokens)
            except torch.OutOfMemoryError:
                if b == 1:
                    raise
                oom = True
            if oom:  # outside the except block, so the failed attempt's tensors are already released
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.micro = max(1, b // 2)
                self.info["oom_backoffs"].append({"from": b, "to": self.micro})
                console.print(f"[yellow]out of memory at batch {b}; continuing with {self.micro}[/]")
                continue
            check_finite(out, (names or [f"image {j}" for j in range(len(x))])[i:i + b])
            outs.append({k: v.to("cpu", non_blocking=False) for k, v in out.items()})
            i += b
        self.info["batch_size_final"] = self.micro
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]} if len(outs) > 1 else outs[0]

    def _workers(self) -> int:
        return default_workers(self.device.type) if self.engine.workers is None else self.engine.workers

    def _loader(self, paths: list[Path], batches: list[list[int]]) -> DataLoader:
        workers = self._workers()
        gpu = self.engine.decode == "gpu"
        return DataLoader(
            EncodedDataset(paths) if gpu else ImageDataset(paths, self.model.transform),
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=collate_encoded if gpu else collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers > 0 else None,
        )

    def run(self, paths: list[Path], chunks: list[list[int]], progress: bool = True,
            description: str = "forward") -> Iterator[tuple[int, Chunk]]:
        """Yield (chunk number, Chunk) for each chunk of positions, in order, as soon as it is complete."""
        chunks = [c for c in chunks]
        if not any(chunks):
            return
        self.setup()
        bs = 1 if is_full_res(self.model) else self.engine.batch_size  # full resolution: one size per image
        batches = [(c, members[b:b + bs]) for c, members in enumerate(chunks) for b in range(0, len(members), bs)]
        total = sum(len(c) for c in chunks)
        if self.engine.decode == "gpu" and "gpu_decode_parity" not in self.info:
            from .gpu_decode import parity

            self.info["gpu_decode_parity"] = parity(self.model, [paths[i] for i in batches[0][1]], self.request,
                                                    self.device, self.engine.dtype)
        pending: dict[int, dict] = {}
        n_done = 0
        t0 = time.perf_counter()
        loader = self._loader(paths, [b for _, b in batches])
        if self._workers() == 0 and THREAD_DECODE:
            loader = prefetched(loader)
        with image_progress(progress) as bar, torch.inference_mode():
            task = bar.add_task(description, total=total, rate="")
            for (c, members), (idx, batch, errors) in zip(batches, loader, strict=True):
                if self.should_stop is not None and (msg := self.should_stop()):
                    raise InputError(msg)
                acc = pending.setdefault(c, {"seen": 0, "idx": [], "out": [], "bad": []})
                if self.engine.decode == "gpu" and batch is not None:
                    idx, batch, errors = self._gpu_decode(paths, idx, batch, errors)
                for i, err in errors:
                    if self.engine.on_bad_image == "fail":
                        raise InputError(f"{paths[i]}: unreadable image ({err}); use --on-bad-image skip to skip it")
                    acc["bad"].append((i, err))
                if batch is not None and len(idx):
                    acc["out"].append(self.forward(batch, [str(paths[int(i)]) for i in idx]))
                    acc["idx"].append(idx.numpy())
                    n_done += len(idx)
                acc["seen"] += len(members)
                rate = n_done / max(time.perf_counter() - t0, 1e-9)
                bar.update(task, advance=len(members), rate=f"{rate:.1f} img/s")
                if acc["seen"] == len(chunks[c]):
                    del pending[c]
                    yield c, _chunk(acc)
        self.seconds += time.perf_counter() - t0

    def _gpu_decode(self, paths, idx, data, errors):
        from .gpu_decode import decode_batch

        ok, batch, bad = decode_batch(data, [paths[int(i)] for i in idx], self.model.transform, self.device)
        errors = list(errors) + [(int(idx[j]), err) for j, err in bad]
        return idx[ok], batch, errors


def _chunk(acc: dict) -> Chunk:
    index = np.concatenate(acc["idx"]).astype(np.int64) if acc["idx"] else np.zeros(0, dtype=np.int64)
    if acc["out"] and any(len(set(o[k].shape[1:] for o in acc["out"])) > 1 for k in acc["out"][0]):
        arrays = {k: stack_rows([r for o in acc["out"] for r in o[k]]) for k in acc["out"][0]}  # full resolution
        return Chunk(index=index, arrays=arrays, bad=sorted(acc["bad"]))
    arrays = {k: torch.cat([o[k] for o in acc["out"]]).numpy() for k in acc["out"][0]} if acc["out"] else {}
    return Chunk(index=index, arrays=arrays, bad=sorted(acc["bad"]))
