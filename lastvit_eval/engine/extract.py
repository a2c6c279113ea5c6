"""Features for a list of images: read from the feature store where it holds them, else one forward pass.

`extract(model, paths, request, engine, store=StoreSpec())` is the one entry point every command uses.
It hashes the files (content identity), asks the store which requested taps it already holds, forwards
only the missing images (in chunks, each written to the store before the next starts), and assembles
the arrays in the order of `paths`. With `widen=True` a forward also keeps the cheap taps of the
standard poolings (cls, gap, last-k1), so that a later command asking for another of them on the same
images reads instead of forwarding again. Under torch.distributed, chunks go to ranks in turn; rank 0
assembles, other ranks return `assembled=False`.

Streaming reduction (`reduce=`): a caller whose single consumer only needs a small per-image result (CorLoc: a
box from ragged full-resolution keys) passes a reducer; it is applied chunk by chunk, as images are forwarded
(no store: full-resolution chunks of `REDUCE_CHUNK` images) or as they are read back from the store (one
shard's images at a time), and only its outputs are kept, so at most a chunk of taps is held at once. What is
written to the store is always the unreduced taps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import LastvitError
from ..models.base import LoadedModel
from ..models.lazy import remember
from ..pooling import PoolingSpec
from . import distributed
from .device import EngineSpec, resolve_device
from .full_res import is_full_res, stack_rows, uses_store
from .hashing import content_hashes
from .progress import console
from .runner import BatchRunner, ForwardFn, default_workers  # noqa: F401  (default_workers: re-exported)
from .store import CorruptShard, FeatureSpace, StoreSpec, space_parts  # noqa: F401
from .taps import CHEAP_TAPS, TapRequest, forward_taps

# (tap arrays of some images, their positions in the path list) -> per-image reduced arrays, rows aligned
Reducer = Callable[[dict[str, np.ndarray], np.ndarray], dict[str, np.ndarray]]
REDUCE_CHUNK = 16  # full resolution, no store: images forwarded (batch 1) before their taps are reduced

STANDARD_POOLINGS = (PoolingSpec("cls"), PoolingSpec("gap"), PoolingSpec("last", topk=1))


@dataclass
class Features:
    index: np.ndarray  # positions (into the input path list) of the images that were processed
    arrays: dict[str, np.ndarray]  # tap key -> [n, ...], rows aligned with `index`
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, error) of skipped images
    seconds: float = 0.0  # wall time of the whole call (store reads included)
    device: str = "cpu"
    assembled: bool = True  # False on torch.distributed ranks other than 0: they hold no arrays
    store: dict = field(default_factory=dict)  # space key, images reused / computed, corrupt shards
    engine_info: dict = field(default_factory=dict)  # OOM backoffs, compile status, GPU decode parity
    compute_seconds: float = 0.0  # time spent in forward passes by this process
    pooling_free: set[str] = field(default_factory=set)  # reduced outputs (no pooling suffix) besides the taps

    @property
    def images_per_second(self) -> float:
        return len(self.index) / self.seconds if self.seconds > 0 else float("nan")


def widened(model: LoadedModel, request: TapRequest) -> TapRequest:
    """The request plus every cheap tap of the standard poolings (what a forward stores anyway)."""
    poolings = {p.name: p for p in request.poolings}
    for p in STANDARD_POOLINGS:
        if p.kind == "cls" and not model.has_class_token:  # from arch: a lazy model stays unbuilt
            continue
        poolings.setdefault(p.name, p)
    return TapRequest(tuple(poolings.values()), frozenset(request.taps | CHEAP_TAPS),
                      probe_poolings=frozenset(p.name for p in request.poolings))  # extra forwards: asked-for only


def open_space(model: LoadedModel, engine: EngineSpec, store: StoreSpec) -> FeatureSpace:
    space = FeatureSpace(store.root, space_parts(model, engine, resolve_device(engine.device).type))
    space.open()
    return space


def stored_counts(model: LoadedModel, paths: list[Path], request: TapRequest, engine: EngineSpec,
                  store: StoreSpec) -> dict:
    """For --dry-run: how many of `paths` the store holds every requested tap for (nothing is written)."""
    keys = request.keys(model)
    space = FeatureSpace(store.root, space_parts(model, engine, resolve_device(engine.device).type))
    hashes = content_hashes(paths, store.root / "hashes.sqlite" if store.root.exists() else None)
    have = np.ones(len(paths), dtype=bool)
    for k in keys:
        have &= space.has(k, hashes)
    return {"images": len(paths), "stored": int(have.sum()), "to_forward": int((~have).sum()), "space": space.key}


def extract(
    model: LoadedModel,
    paths: list[Path],
    request: TapRequest,
    engine: EngineSpec,
    store: StoreSpec | None = None,
    progress: bool = True,
    description: str = "forward",
    widen: bool = False,
    forward_fn: ForwardFn | None = None,
    reduce: Reducer | None = None,
) -> Features:
    """Taps (or, with `reduce`, the reducer's outputs) for `paths`; rows aligned with `Features.index`."""
    t0 = time.perf_counter()
    paths = [Path(p) for p in paths]
    d = distributed.current()
    use_store = store is not None and store.enabled and uses_store(model)  # full resolution: ragged, not stored
    if not use_store and d.world > 1:
        from ..errors import InputError

        raise InputError("distributed extraction exchanges features through the feature store; drop --no-cache")
    keys = request.keys(model)
    compute_request = widened(model, request) if (widen and use_store) else request
    space = open_space(model, engine, store) if use_store else None
    if space is not None:
        remember(model)  # the store exists now: a later command can plan without building the model
    shard_size = store.shard_size if store is not None else 1024
    # batch 1 at full resolution: a smaller chunk changes no batch, only how many images' taps wait for `reduce`
    chunk_size = REDUCE_CHUNK if (reduce is not None and space is None and is_full_res(model)) else shard_size
    hashes = content_hashes(paths, store.root / "hashes.sqlite") if use_store else [None] * len(paths)
    report = {"space": space.key if space else None, "dir": str(space.dir) if space else None,
              "images_reused": 0, "images_computed": 0, "corrupt": []}
    stop = (lambda: distributed.abort_message(store.root)) if (use_store and d.world > 1) else None
    runner = BatchRunner(model, compute_request, engine, forward_fn=forward_fn or forward_taps, should_stop=stop)
    memory: dict[int, dict[str, np.ndarray]] = {}  # no store: computed rows kept here (position -> taps)
    bad: dict[int, str] = {}

    def missing_positions() -> np.ndarray:
        if space is None:
            return np.array([i for i in range(len(paths)) if i not in memory and i not in bad], dtype=np.int64)
        have = np.ones(len(paths), dtype=bool)
        for k in keys:
            have &= space.has(k, hashes)
        for i in bad:
            have[i] = True
        return np.flatnonzero(~have)

    def compute(todo: np.ndarray, mine: bool = True) -> None:
        if mine and d.world > 1:
            # blocks of the whole path list go to ranks in turn: a partition every rank computes alike, however
            # far the others have got (a rank's view of what is missing changes as they write)
            todo = todo[(todo // shard_size) % d.world == d.rank]
        chunks = [todo[s:s + chunk_size].tolist() for s in range(0, len(todo), chunk_size)]
        for _, chunk in runner.run(paths, chunks, progress and (d.is_main or not mine), description):
            for i, err in chunk.bad:
                bad[i] = err
            if not len(chunk.index):
                continue
            report["images_computed"] += int(len(chunk.index))
            if space is not None:
                ok = [j for j, i in enumerate(chunk.index) if hashes[i] is not None]
                space.write({k: v[ok] for k, v in chunk.arrays.items()}, [hashes[chunk.index[j]] for j in ok])
            else:
                rows = {k: chunk.arrays[k] for k in keys}
                if reduce is not None:
                    rows = reduce(rows, chunk.index)
                for j, i in enumerate(chunk.index):
                    memory[int(i)] = {k: v[j] for k, v in rows.items()}

    todo = missing_positions()
    report["images_reused"] = int(len(paths) - len(todo))
    try:
        compute(todo)
    except LastvitError as e:
        if d.world == 1:
            raise
        if use_store:
            distributed.signal_abort(store.root, str(e))
        distributed.agree(str(e))
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_kept(report, len(todo), len(bad), shard_size, d)) from None
    if d.world > 1:
        distributed.agree(None)
    if not d.is_main:
        return Features(index=np.zeros(0, dtype=np.int64), arrays={}, seconds=time.perf_counter() - t0,
                        device=str(runner.device), assembled=False, store=report, engine_info=runner.info,
                        compute_seconds=runner.seconds)
    if space is not None:
        space.refresh()
    arrays: dict[str, np.ndarray] = {}
    for _ in range(3):  # images lost on other ranks or in damaged shards are redone here
        rest = missing_positions()
        if len(rest):
            compute(rest, mine=False)
        ok = np.array([i for i in range(len(paths)) if i not in bad], dtype=np.int64)
        if reduce is not None and space is not None:
            arrays, lost = _read_reduced(ok, keys, space, hashes, report, reduce)
        else:
            arrays, lost = _assemble(ok, list(memory[int(ok[0])]) if (len(ok) and space is None) else keys, space,
                                     hashes, memory, report)
        if not len(lost):
            break
    else:  # pragma: no cover - the store kept losing shards
        raise LastvitError(f"feature store {space.dir if space else ''}: shards keep failing their checksum")
    return Features(index=ok, arrays=arrays, bad=[(str(paths[i]), bad[i]) for i in sorted(bad)],
                    seconds=time.perf_counter() - t0, device=str(runner.device), store=report,
                    engine_info=runner.info, compute_seconds=runner.seconds)


def _assemble(ok: np.ndarray, keys: list[str], space: FeatureSpace | None, hashes: list, memory: dict,
              report: dict) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Arrays for positions `ok`, and the positions whose stored shard turned out damaged."""
    arrays: dict[str, np.ndarray] = {}
    lost: set[int] = set()
    for k in keys:
        if space is None:
            arrays[k] = stack_rows([memory[int(i)][k] for i in ok]) if len(ok) else np.zeros((0,), np.float32)
            continue
        if not len(ok):
            arrays[k] = np.zeros((0,), np.float32)
            continue
        n_corrupt = len(report["corrupt"])
        out, gone = space.read(k, [hashes[i] for i in ok], report["corrupt"])
        for msg in report["corrupt"][n_corrupt:]:
            console.print(f"[yellow]feature store: {msg}; recomputing its images[/]")
        lost.update(int(ok[j]) for j in gone)
        if out is not None:
            arrays[k] = out
    return arrays, np.array(sorted(lost), dtype=np.int64)


def _read_reduced(ok: np.ndarray, keys: list[str], space: FeatureSpace, hashes: list, report: dict,
                  reduce: Reducer) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`_assemble` for a reducer: the images of one shard (of the first key) at a time are read, reduced, dropped."""
    if not len(ok):
        return {k: np.zeros((0,), np.float32) for k in keys}, np.zeros(0, dtype=np.int64)
    where = space.index(keys[0]).rows
    groups: dict[str, list[int]] = {}
    for i in ok:
        groups.setdefault(where[hashes[i]][0], []).append(int(i))
    parts: list[dict[str, np.ndarray]] = []
    order: list[np.ndarray] = []
    lost: set[int] = set()
    for members in groups.values():
        # a shard discarded as damaged earlier in this loop no longer indexes its images: recompute them
        gone = {i for i in members if any(hashes[i] not in space.index(k).rows for k in keys)}
        pos = np.array([i for i in members if i not in gone], dtype=np.int64)
        taps: dict[str, np.ndarray] = {}
        for k in keys if len(pos) else ():
            n_corrupt = len(report["corrupt"])
            taps[k], bad = space.read(k, [hashes[i] for i in pos], report["corrupt"])
            for msg in report["corrupt"][n_corrupt:]:
                console.print(f"[yellow]feature store: {msg}; recomputing its images[/]")
            gone.update(int(pos[j]) for j in bad)
        lost |= gone
        if gone or not len(pos):
            continue
        parts.append(reduce(taps, pos))
        order.append(pos)
        del taps
    if lost:
        return {}, np.array(sorted(lost), dtype=np.int64)
    perm = np.argsort(np.concatenate(order), kind="stable")  # back to the order of `ok` (ascending positions)
    return {k: np.concatenate([p[k] for p in parts])[perm] for k in parts[0]}, np.zeros(0, dtype=np.int64)


def _kept(report: dict, todo: int, bad: int, shard_size: int, d) -> str:
    """What Ctrl-C leaves behind, in one line (the CLI prints it and exits 130): finished shards are in the
    store and the same command resumes after them."""
    import math

    mine = len(range(d.rank, math.ceil(todo / shard_size), d.world)) if todo else 0
    done = math.ceil((report["images_computed"] + bad) / shard_size)  # chunks finish whole, in order
    if not report.get("space"):
        return f"no features kept (--no-cache); a rerun forwards all {todo} images again"
    return (f"{done} of {mine} shards kept ({report['images_computed']} of {todo} images to forward) in the "
            f"feature store {report['dir']}; rerun the same command to resume")
