"""Content-addressed feature cache: one forward pass serves every later evaluator and every rerun.

An entry is a folder `<cache dir>/features/<key>/` where `key` is the sha256 of a canonical JSON of
everything that changes the features: checkpoint bytes (sha256), architecture and load options, the
tap request, the transform and decode path, the dtype, the dataset manifest (ordered relative paths
with sizes and mtimes, or content hashes), the shard size and the toolkit version. Features are stored
as fixed-size shards (`shard-000012.safetensors`, rows = images `[12*S, 13*S)` of the path list), each
written atomically (temp file + os.replace) and followed by a sidecar `shard-000012.json` holding its
sha256. A shard counts as done only when its sidecar exists and the checksum matches; anything else
(killed run, truncated or edited file) is recomputed, never used. Writers never share a file, so
several ranks or runs can fill one entry concurrently; `manifest.json` holds the key parts in readable
form, the shard list with checksums once complete, and the status (partial | complete).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from ..errors import InputError
from ..models.checkpoint import sha256_file

CACHE_ENV = "LASTVIT_EVAL_CACHE"
LAYOUT_VERSION = 1
DEFAULT_SHARD_SIZE = 1024
HASH_MODES = ("stat", "content")


def default_cache_dir() -> Path:
    """`$LASTVIT_EVAL_CACHE`, else `$XDG_CACHE_HOME/lastvit-eval`, else `~/.cache/lastvit-eval`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "lastvit-eval"
    return Path.home() / ".cache" / "lastvit-eval"


@dataclass(frozen=True)
class CacheSpec:
    """Where and how to cache features; `extract(..., cache=CacheSpec())` turns caching on."""

    dir: Path | None = None  # None: default_cache_dir()
    enabled: bool = True
    shard_size: int = DEFAULT_SHARD_SIZE  # images per shard file; part of the key (it fixes the layout)
    dataset_hash: str = "stat"  # stat: path + size + mtime (fast); content: sha256 of each file's bytes

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise InputError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.dataset_hash not in HASH_MODES:
            raise InputError(f"dataset hash {self.dataset_hash!r}: use stat or content")

    @property
    def root(self) -> Path:
        return Path(self.dir).expanduser() if self.dir is not None else default_cache_dir()


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dataset_manifest(paths: list[Path], mode: str = "stat") -> dict:
    """Readable summary + digest of the image list, in the given order (the order fixes the shards).

    Paths are taken relative to their common folder so a dataset that is mounted elsewhere with the
    same files (same sizes and mtimes, or same bytes) keeps its key.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        return {"root": "", "files": 0, "hash": mode, "digest": sha256_bytes(b"")}
    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath(absolute) if len(absolute) > 1 else os.path.dirname(absolute[0])
    h = hashlib.sha256()
    for p in absolute:
        rel = os.path.relpath(p, root)
        try:
            if mode == "content":
                sig = sha256_file(Path(p))
            else:
                st = os.stat(p)
                sig = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            sig = "missing"  # an unreadable file is part of the dataset's identity too
        h.update(f"{rel}\0{sig}\n".encode())
    return {"root": root, "files": len(paths), "hash": mode, "digest": h.hexdigest()}


def key_parts(model, paths: list[Path], request, engine, spec: CacheSpec) -> dict:
    """Everything that changes the stored arrays, as plain JSON data (hashed into the key)."""
    from .. import __version__

    opts = getattr(model, "load_options", None)
    load = {k: v for k, v in asdict(opts).items() if k != "trust"} if opts is not None else None
    return {
        "layout": LAYOUT_VERSION,
        "toolkit": __version__,
        "model": {
            "sha256": model.sha256,
            "source": None if model.sha256 else model.source,  # hub names have no file to hash
            "arch": model.arch.to_dict(),
            "key_mapping": list(model.keys.steps),
            "dropped": sorted(model.keys.dropped),
            "ignored": sorted(model.keys.ignored),
            "load_options": load,
        },
        "request": {
            "poolings": sorted((p.to_dict() for p in request.poolings), key=canonical_json),
            "taps": sorted(request.taps),
        },
        "transform": model.transform.to_dict(),
        "decode": getattr(engine, "decode", "cpu"),
        "dtype": engine.dtype,
        "dataset": dataset_manifest(paths, spec.dataset_hash),
        "shard_size": spec.shard_size,
    }


def cache_key(parts: dict) -> str:
    """sha256 of the canonical JSON; the dataset root is left out (only relative names count)."""
    hashed = json.loads(canonical_json(parts))
    hashed["dataset"].pop("root", None)
    return sha256_bytes(canonical_json(hashed).encode())


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Shard:
    """One shard's rows: positions inside the shard of the images that decoded, their taps, bad files."""

    index: np.ndarray  # int64 [m], local positions (0 .. shard length - 1)
    arrays: dict[str, np.ndarray]
    bad: list[tuple[int, str]] = field(default_factory=list)  # (local position, error)


class CorruptShard(Exception):
    """A shard file whose bytes do not match its recorded checksum (or cannot be parsed)."""


class CacheEntry:
    """One cache key's folder: shards, sidecars, manifest."""

    def __init__(self, root: Path, key: str) -> None:
        self.root = Path(root)
        self.key = key
        self.dir = self.root / "features" / key

    def shard_file(self, s: int) -> Path:
        return self.dir / f"shard-{s:06d}.safetensors"

    def sidecar_file(self, s: int) -> Path:
        return self.dir / f"shard-{s:06d}.json"

    @property
    def manifest_file(self) -> Path:
        return self.dir / "manifest.json"

    def read_manifest(self) -> dict | None:
        try:
            return json.loads(self.manifest_file.read_text())
        except (OSError, ValueError):
            return None

    def open(self, parts: dict, shards_total: int, info: dict) -> None:
        """Create the folder and a partial manifest unless one is already there."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.read_manifest() is None:
            self._write_manifest({"key": self.key, "status": "partial", "created": _now(), "updated": _now(),
                                  "shards_total": shards_total, "parts": parts, "info": info, "shards": []})

    def _write_manifest(self, manifest: dict) -> None:
        _atomic_write(self.manifest_file, (json.dumps(manifest, indent=2, default=str) + "\n").encode())

    def write_shard(self, s: int, shard: Shard) -> dict:
        """Shard file first, sidecar second: a sidecar always describes a complete shard file."""
        arrays = {"index": np.ascontiguousarray(shard.index, dtype=np.int64)}
        arrays.update({f"tap:{k}": np.ascontiguousarray(v) for k, v in shard.arrays.items()})
        data = st_save(arrays)
        _atomic_write(self.shard_file(s), data)
        side = {"shard": s, "file": self.shard_file(s).name, "sha256": sha256_bytes(data), "bytes": len(data),
                "images": int(len(shard.index)), "bad": [[int(i), e] for i, e in shard.bad]}
        _atomic_write(self.sidecar_file(s), (json.dumps(side) + "\n").encode())
        return side

    def sidecar(self, s: int) -> dict | None:
        try:
            side = json.loads(self.sidecar_file(s).read_text())
        except (OSError, ValueError):
            return None
        return side if isinstance(side, dict) and "sha256" in side else None

    def load_shard(self, s: int) -> Shard | None:
        """The shard if it is done and intact; None if never finished; CorruptShard if damaged."""
        side = self.sidecar(s)
        if side is None:
            return None
        try:
            data = self.shard_file(s).read_bytes()
        except OSError as e:
            raise CorruptShard(f"shard {s}: {e.strerror or e}") from None
        if len(data) != side.get("bytes") or sha256_bytes(data) != side["sha256"]:
            raise CorruptShard(f"shard {s}: checksum mismatch ({len(data)} bytes, expected {side.get('bytes')})")
        try:
            arrays = st_load(data)
        except (SafetensorError, ValueError) as e:
            raise CorruptShard(f"shard {s}: unreadable ({e})") from None
        index = arrays.pop("index")
        taps = {k.removeprefix("tap:"): v for k, v in arrays.items()}
        return Shard(index=index, arrays=taps, bad=[(int(i), str(e)) for i, e in side.get("bad", [])])

    def discard_shard(self, s: int) -> None:
        self.sidecar_file(s).unlink(missing_ok=True)
        self.shard_file(s).unlink(missing_ok=True)

    def finalize(self, shards_total: int) -> None:
        """Record the shard list with checksums and mark the entry complete."""
        manifest = self.read_manifest() or {"key": self.key, "created": _now()}
        sides = [self.sidecar(s) for s in range(shards_total)]
        manifest.update({"status": "complete" if all(sides) else "partial", "updated": _now(),
                         "shards_total": shards_total,
                         "shards": [{k: v for k, v in side.items() if k != "bad"} for side in sides if side]})
        self._write_manifest(manifest)


@dataclass
class EntrySummary:
    """What `cache ls` shows for one entry."""

    key: str
    checkpoint: str
    dataset: str
    taps: str
    shards_done: int
    shards_total: int
    bytes: int
    created: str
    status: str


def summarize_entry(entry: CacheEntry) -> EntrySummary:
    m = entry.read_manifest() or {}
    parts = m.get("parts", {})
    info = m.get("info", {})
    model = parts.get("model", {})
    sha = model.get("sha256") or ""
    ckpt = f"{info.get('checkpoint', model.get('source') or '?')}" + (f" ({sha[:12]})" if sha else "")
    ds = parts.get("dataset", {})
    request = parts.get("request", {})
    poolings = ",".join(p.get("kind", "?") + (f"-k{p['topk']}" if p.get("kind") == "last" else "")
                        for p in request.get("poolings", []))
    done = sum(1 for f in entry.dir.glob("shard-*.json") if entry.sidecar(int(f.stem.split("-")[1])) is not None)
    size = sum(f.stat().st_size for f in entry.dir.iterdir() if f.is_file())
    return EntrySummary(
        key=entry.key,
        checkpoint=ckpt,
        dataset=f"{ds.get('root', '?')} ({ds.get('files', '?')} images)",
        taps=f"{','.join(request.get('taps', []))} [{poolings}] {parts.get('dtype', '')}".strip(),
        shards_done=done,
        shards_total=int(m.get("shards_total", 0)),
        bytes=size,
        created=m.get("created", ""),
        status=m.get("status", "unknown"),
    )


def list_entries(root: Path) -> list[EntrySummary]:
    base = Path(root) / "features"
    if not base.is_dir():
        return []
    entries = [CacheEntry(root, d.name) for d in sorted(base.iterdir()) if d.is_dir()]
    return sorted((summarize_entry(e) for e in entries), key=lambda e: e.created)


def resolve_keys(root: Path, prefixes: list[str]) -> list[str]:
    """Full keys for unique key prefixes; an unknown or ambiguous prefix is an input error."""
    base = Path(root) / "features"
    keys = [d.name for d in base.iterdir() if d.is_dir()] if base.is_dir() else []
    out = []
    for p in prefixes:
        hits = [k for k in keys if k.startswith(p)]
        if not hits:
            raise InputError(f"cache {root}: no entry with key {p!r}")
        if len(hits) > 1:
            raise InputError(f"cache {root}: key prefix {p!r} matches {len(hits)} entries; give more characters")
        out.append(hits[0])
    return out


def clear(root: Path, keys: list[str] | None = None) -> list[str]:
    """Delete the given entries (unique key prefixes), or every entry when `keys` is None."""
    base = Path(root) / "features"
    chosen = resolve_keys(root, keys) if keys is not None else (
        [d.name for d in base.iterdir() if d.is_dir()] if base.is_dir() else [])
    for k in chosen:
        shutil.rmtree(base / k)
    return chosen
