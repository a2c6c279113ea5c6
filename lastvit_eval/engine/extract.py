"""The one forward pass: final normalized tokens -> every requested pooling and tap, in fp32."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..models.base import LoadedModel
from ..pooling import PoolingSpec, patch_scores, pool
from . import distributed
from .cache import DEFAULT_SHARD_SIZE, CacheEntry, CacheSpec, CorruptShard, Shard, cache_key, key_parts
from .device import EngineSpec, autocast
from .progress import console
from .runner import BatchRunner, default_workers  # noqa: F401  (default_workers: re-exported)

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
    seconds: float = 0.0  # wall time of the whole call (cache reads included)
    device: str = "cpu"
    assembled: bool = True  # False on torch.distributed ranks other than 0: they hold no arrays
    cache: dict = field(default_factory=dict)  # key, dir, shards reused / computed / corrupt
    engine_info: dict = field(default_factory=dict)  # OOM backoffs, compile status, GPU decode parity
    compute_seconds: float = 0.0  # time spent in forward passes by this process

    @property
    def images_per_second(self) -> float:
        return len(self.index) / self.seconds if self.seconds > 0 else float("nan")


def forward_taps(model: LoadedModel, x: torch.Tensor, request: TapRequest, dtype: str,
                 tokens_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Taps for one normalized batch. Pooling, scores, heads run in fp32 whatever the autocast dtype.

    `tokens_fn` replaces `backbone.tokens` (e.g. its torch.compile'd version).
    """
    bb = model.backbone
    with autocast(x.device, dtype):
        tokens = (tokens_fn or bb.tokens)(x)
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
    cache: CacheSpec | None = None,
) -> Features:
    """Features for `paths` (in order), read from the cache where it holds them, else one forward pass.

    This is the one entry point evaluators' pipelines use: `extract(model, paths, request, engine,
    cache=CacheSpec(dir))`. With `cache=None` (or `enabled=False`) nothing is read or written. With a
    cache, every finished shard is written before the next starts, so an interrupted run resumes where it
    stopped, and a damaged shard is reported (`Features.cache['corrupt']`) and recomputed. Under
    torch.distributed, rank r extracts shards s with s % world == r, all ranks meet at a barrier, and
    rank 0 returns the assembled features; other ranks get `assembled=False` and no arrays.
    Bad images are skipped (listed in `bad`) or, with `on_bad_image='fail'`, fail the run.
    """
    t0 = time.perf_counter()
    paths = [Path(p) for p in paths]
    d = distributed.current()
    shard_size = cache.shard_size if cache is not None else DEFAULT_SHARD_SIZE
    n_shards = math.ceil(len(paths) / shard_size)
    entry = _open_entry(model, paths, request, engine, cache, n_shards) if cache is not None and cache.enabled else None
    if entry is None and d.world > 1:
        raise InputError("distributed extraction exchanges shards through the feature cache; drop --no-cache")
    runner = BatchRunner(model, request, engine)
    report: dict = {"key": entry.key if entry else None, "dir": str(entry.dir) if entry else None,
                    "shards": n_shards, "shard_size": shard_size, "reused": 0, "computed": 0, "corrupt": []}
    shards: dict[int, Shard] = {}

    def load(s: int) -> Shard | None:
        if entry is None:
            return None
        try:
            return entry.load_shard(s)
        except CorruptShard as e:
            report["corrupt"].append(str(e))
            console.print(f"[yellow]cache {entry.key[:12]}: {e}; recomputing it[/]")
            entry.discard_shard(s)
            return None

    def compute(todo: list[int], show: bool) -> None:
        for s, shard in runner.run(paths, todo, shard_size, progress and show, description):
            if entry is not None:
                entry.write_shard(s, shard)
            report["computed"] += 1
            if d.is_main:
                shards[s] = shard

    todo = []
    for s in range(d.rank, n_shards, d.world):
        shard = load(s)
        if shard is None:
            todo.append(s)
        else:
            report["reused"] += 1
            if d.is_main:
                shards[s] = shard
    compute(todo, d.is_main)
    distributed.barrier()
    if not d.is_main:
        return Features(index=np.zeros(0, dtype=np.int64), arrays={}, seconds=time.perf_counter() - t0,
                        device=str(runner.device), assembled=False, cache=report, engine_info=runner.info,
                        compute_seconds=runner.seconds)
    missing = []
    for s in range(n_shards):
        if s not in shards:
            shard = load(s)
            if shard is None:
                missing.append(s)  # lost or damaged after its rank wrote it: rank 0 redoes it
            else:
                shards[s] = shard
    report["from_other_ranks"] = n_shards - len(missing) - len(todo) - report["reused"]
    compute(missing, True)
    if entry is not None:
        entry.finalize(n_shards)
    feats = _assemble(paths, shards, n_shards, shard_size, engine)
    feats.seconds = time.perf_counter() - t0
    feats.device = str(runner.device)
    feats.cache = report
    feats.engine_info = runner.info
    feats.compute_seconds = runner.seconds
    return feats


def _open_entry(model, paths, request, engine, cache: CacheSpec, n_shards: int) -> CacheEntry:
    parts = key_parts(model, paths, request, engine, cache)
    entry = CacheEntry(cache.root, cache_key(parts))
    info = {"checkpoint": model.name, "source": model.source, "description": "features for " + ", ".join(
        sorted(request.taps)), "engine": engine.to_dict()}
    try:
        entry.open(parts, n_shards, info)
    except OSError as e:
        raise InputError(f"cache dir {cache.root}: cannot write ({e.strerror or e})") from None
    return entry


def _assemble(paths: list[Path], shards: dict[int, Shard], n_shards: int, shard_size: int,
              engine: EngineSpec) -> Features:
    index, bad = [], []
    arrays: dict[str, list[np.ndarray]] = {}
    for s in range(n_shards):
        shard = shards[s]
        start = s * shard_size
        for i, err in shard.bad:
            if engine.on_bad_image == "fail":
                raise InputError(f"{paths[start + i]}: unreadable image ({err}); use --on-bad-image skip to skip it")
            bad.append((str(paths[start + i]), err))
        if len(shard.index):
            index.append(shard.index + start)
            for k, v in shard.arrays.items():
                arrays.setdefault(k, []).append(v)
    return Features(
        index=np.concatenate(index) if index else np.zeros(0, dtype=np.int64),
        arrays={k: np.concatenate(v) for k, v in arrays.items()},
        bad=bad,
    )
