"""The feature store: one per-image store that every command reads and fills.

Layout under the store root (`--cache-dir`, else `$LASTVIT_EVAL_CACHE`, else `$XDG_CACHE_HOME/lastvit-eval`,
else `~/.cache/lastvit-eval`):

    features/<space>/space.json                   what the space is, readable
    features/<space>/<tap>~<pooling>/<id>.safetensors + <id>.json
    text/<key>.safetensors                        zero-shot text classifiers
    hashes.sqlite                                 file stat -> content hash memo

A *space* is one way of turning pixels into features: the checkpoint (sha256, or the hub name), every
load option that changes the weights or the forward, the inferred architecture, the transform, the
decode path, the dtype, the device type, a fingerprint of the code that shapes features and the
library versions (`fingerprint.py`). Inside a space, every row is keyed by the image's content hash, so
a renamed or copied tree still hits, and any command computes only the images it is missing.

Each tap (`pooled/last-k1`, `logits/cls`, ...) is its own column of shards. A shard holds the hashes
and values of one chunk of images; it is written atomically (temp file + rename) and followed by a
sidecar JSON holding its sha256. A shard counts only once its sidecar exists and its bytes match; a
killed run leaves at most a shard without sidecar (ignored), a damaged shard is reported, removed and
its images recomputed. Writers never share a file, so several ranks or runs can fill one space at once.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from ..errors import InputError

STORE_ENV = "LASTVIT_EVAL_CACHE"
LAYOUT_VERSION = 2
DEFAULT_SHARD_SIZE = 1024


def default_store_dir() -> Path:
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "lastvit-eval"
    return Path.home() / ".cache" / "lastvit-eval"


@dataclass(frozen=True)
class StoreSpec:
    """Where the store lives and whether to use it (`--cache-dir`, `--no-cache`, `--shard-size`)."""

    dir: Path | None = None
    enabled: bool = True
    shard_size: int = DEFAULT_SHARD_SIZE  # images per shard: the unit of resume and of distributed work

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise InputError(f"--shard-size must be >= 1, got {self.shard_size}")

    @property
    def root(self) -> Path:
        return Path(self.dir).expanduser() if self.dir is not None else default_store_dir()


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_identity(model) -> dict:
    """Everything about a loaded model that changes its features (the trust flag does not)."""
    opts = getattr(model, "load_options", None)
    load = {k: v for k, v in asdict(opts).items() if k != "trust"} if opts is not None else None
    return {
        "sha256": model.sha256,
        "source": None if model.sha256 else model.source,  # hub names have no file to hash
        "name": model.name,
        "arch": model.arch.to_dict(),
        "key_mapping": list(model.keys.steps),
        "dropped": sorted(model.keys.dropped),
        "ignored": sorted(model.keys.ignored),
        "load_options": load,
    }


def space_parts(model, engine, device_type: str) -> dict:
    from .fingerprint import code_fingerprint, library_versions

    return {
        "layout": LAYOUT_VERSION,
        "model": model_identity(model),
        "transform": model.transform.to_dict(),
        "decode": engine.decode,
        "dtype": engine.dtype,
        "device_type": device_type,
        "code": code_fingerprint(),
        "libraries": library_versions(),
    }


def space_key(parts: dict) -> str:
    hashed = json.loads(canonical_json(parts))
    hashed["model"].pop("name", None)  # a renamed checkpoint file is the same model
    return sha256_bytes(canonical_json(hashed).encode())[:32]


def tap_dir_name(tap_key: str) -> str:
    return tap_key.replace("/", "~")


def atomic_write(path: Path, data: bytes) -> None:
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


def _hash_bytes(hashes: list[str]) -> np.ndarray:
    return np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), dtype=np.uint8).reshape(len(hashes), 32)


class CorruptShard(Exception):
    """A shard whose bytes do not match its sidecar's checksum, or that cannot be parsed."""


@dataclass
class TapIndex:
    """content hash (hex) -> (shard id, row) for one tap column."""

    rows: dict[str, tuple[str, int]] = field(default_factory=dict)


class FeatureSpace:
    """One space's folder: tap columns of shards."""

    def __init__(self, root: Path, parts: dict) -> None:
        self.root = Path(root)
        self.parts = parts
        self.key = space_key(parts)
        self.dir = self.root / "features" / self.key
        self._index: dict[str, TapIndex] = {}

    def open(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            info = self.dir / "space.json"
            if not info.exists():
                atomic_write(info, (json.dumps({"key": self.key, "created": _now(), "parts": self.parts},
                                               indent=2, default=str) + "\n").encode())
        except OSError as e:
            raise InputError(f"feature store {self.root}: cannot write ({e.strerror or e})") from None

    def tap_dir(self, tap_key: str) -> Path:
        return self.dir / tap_dir_name(tap_key)

    def index(self, tap_key: str) -> TapIndex:
        if tap_key not in self._index:
            self._index[tap_key] = self._scan(tap_key)
        return self._index[tap_key]

    def refresh(self) -> None:
        self._index.clear()

    def _scan(self, tap_key: str) -> TapIndex:
        from safetensors import safe_open

        idx = TapIndex()
        d = self.tap_dir(tap_key)
        if not d.is_dir():
            return idx
        for side in sorted(d.glob("*.json")):
            shard = d / f"{side.stem}.safetensors"
            try:
                with safe_open(str(shard), framework="np") as f:
                    hashes = f.get_tensor("hashes")
            except (OSError, SafetensorError, ValueError, KeyError):
                continue  # damaged beyond reading its hashes: its images count as missing
            for row, h in enumerate(hashes):
                idx.rows.setdefault(bytes(h).hex(), (side.stem, row))
        return idx

    def has(self, tap_key: str, hashes: list[str | None]) -> np.ndarray:
        rows = self.index(tap_key).rows
        return np.array([h is not None and h in rows for h in hashes], dtype=bool)

    def write(self, arrays: dict[str, np.ndarray], hashes: list[str]) -> None:
        """One shard per tap key for these images (rows aligned with `hashes`); a failed write (a full disk)
        leaves no partial shard and is one line naming the store."""
        try:
            self._write(arrays, hashes)
        except OSError as e:
            raise InputError(f"feature store {self.root}: cannot write ({e.strerror or e}); what was stored before "
                             "is intact, free space or choose another --cache-dir") from None

    def _write(self, arrays: dict[str, np.ndarray], hashes: list[str]) -> None:
        hb = _hash_bytes(hashes)
        for tap_key, values in arrays.items():
            d = self.tap_dir(tap_key)
            d.mkdir(parents=True, exist_ok=True)
            sid = uuid.uuid4().hex[:16]
            data = st_save({"hashes": hb, "values": np.ascontiguousarray(values)})
            atomic_write(d / f"{sid}.safetensors", data)
            side = {"sha256": sha256_bytes(data), "bytes": len(data), "images": len(hashes), "created": _now()}
            atomic_write(d / f"{sid}.json", (json.dumps(side) + "\n").encode())
            rows = self._index.get(tap_key)
            if rows is not None:
                for r, h in enumerate(hashes):
                    rows.rows.setdefault(h, (sid, r))

    def _load(self, tap_key: str, sid: str) -> dict[str, np.ndarray]:
        d = self.tap_dir(tap_key)
        try:
            side = json.loads((d / f"{sid}.json").read_text())
            data = (d / f"{sid}.safetensors").read_bytes()
        except (OSError, ValueError) as e:
            raise CorruptShard(f"{tap_key} shard {sid}: {getattr(e, 'strerror', None) or e}") from None
        if len(data) != side.get("bytes") or sha256_bytes(data) != side.get("sha256"):
            raise CorruptShard(f"{tap_key} shard {sid}: checksum mismatch")
        try:
            return st_load(data)
        except (SafetensorError, ValueError) as e:
            raise CorruptShard(f"{tap_key} shard {sid}: unreadable ({e})") from None

    def discard(self, tap_key: str, sid: str) -> None:
        d = self.tap_dir(tap_key)
        (d / f"{sid}.json").unlink(missing_ok=True)
        (d / f"{sid}.safetensors").unlink(missing_ok=True)
        idx = self._index.get(tap_key)
        if idx is not None:
            for h in [h for h, (s, _) in idx.rows.items() if s == sid]:
                del idx.rows[h]

    def read(self, tap_key: str, hashes: list[str], corrupt: list[str]) -> tuple[np.ndarray | None, np.ndarray]:
        """Stored values for `hashes` (one preallocated array, filled shard by shard) and the positions that
        could not be read (their shard was damaged: reported in `corrupt`, removed, to be recomputed)."""
        where = self.index(tap_key).rows
        by_shard: dict[str, list[int]] = {}
        for i, h in enumerate(hashes):
            by_shard.setdefault(where[h][0], []).append(i)
        out: np.ndarray | None = None
        lost: list[int] = []
        for sid, members in by_shard.items():
            try:
                values = self._load(tap_key, sid)["values"]
            except CorruptShard as e:
                corrupt.append(str(e))
                self.discard(tap_key, sid)
                lost += members
                continue
            if out is None:
                out = np.empty((len(hashes), *values.shape[1:]), dtype=values.dtype)
            out[np.array(members)] = values[np.array([where[hashes[i]][1] for i in members], dtype=np.int64)]
            del values
        return out, np.array(sorted(lost), dtype=np.int64)


# ---- zero-shot text classifiers (text/<key>.npy) ------------------------------------------------------

def text_key(model, classnames: list[str], templates: list[str]) -> str:
    """The model space's model part, the code fingerprint and the exact prompts."""
    from .fingerprint import code_fingerprint

    return sha256_bytes(canonical_json({"model": model_identity(model), "code": code_fingerprint(),
                                        "classnames": classnames, "templates": templates}).encode())[:32]


def read_text_classifier(root: Path, key: str, classes: int) -> np.ndarray | None:
    """The stored classifier [dim, classes], or None (absent or unreadable: it is rebuilt)."""
    path = Path(root) / "text" / f"{key}.npy"
    try:
        w = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return w if w.ndim == 2 and w.shape[1] == classes else None


def write_text_classifier(root: Path, key: str, w: np.ndarray) -> None:
    import io

    path = Path(root) / "text" / f"{key}.npy"
    buf = io.BytesIO()
    np.save(buf, w)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buf.getvalue())
    except OSError as e:
        raise InputError(f"feature store {root}: cannot write the text classifier ({e.strerror or e})") from None


# ---- listing and clearing (cache ls / cache clear) -------------------------------------------------

@dataclass
class ColumnSummary:
    space: str
    model: str
    sha256: str
    tap: str
    images: int
    shards: int
    bytes: int
    updated: float  # unix time of the newest file


def list_columns(root: Path) -> list[ColumnSummary]:
    base = Path(root) / "features"
    out: list[ColumnSummary] = []
    if not base.is_dir():
        return out
    for space in sorted(p for p in base.iterdir() if p.is_dir()):
        try:
            parts = json.loads((space / "space.json").read_text()).get("parts", {})
        except (OSError, ValueError):
            parts = {}
        model = parts.get("model", {})
        for col in sorted(p for p in space.iterdir() if p.is_dir()):
            sides = list(col.glob("*.json"))
            images = 0
            for s in sides:
                try:
                    images += int(json.loads(s.read_text()).get("images", 0))
                except (OSError, ValueError):
                    pass
            files = [f for f in col.iterdir() if f.is_file()]
            out.append(ColumnSummary(
                space=space.name, model=str(model.get("name") or model.get("source") or "?"),
                sha256=str(model.get("sha256") or ""), tap=col.name.replace("~", "/"), images=images,
                shards=len(sides), bytes=sum(f.stat().st_size for f in files),
                updated=max((f.stat().st_mtime for f in files), default=space.stat().st_mtime)))
    return out


def clear_spaces(root: Path, model: str | None = None, older_than_days: float | None = None,
                 everything: bool = False) -> list[str]:
    """Delete whole spaces: those of a model (name or sha256 prefix), or untouched for N days, or all."""
    import time

    base = Path(root) / "features"
    if not base.is_dir():
        return []
    removed = []
    by_space: dict[str, list[ColumnSummary]] = {}
    for c in list_columns(root):
        by_space.setdefault(c.space, []).append(c)
    for space in sorted(p.name for p in base.iterdir() if p.is_dir()):
        cols = by_space.get(space, [])
        name = cols[0].model if cols else ""
        sha = cols[0].sha256 if cols else ""
        newest = max((c.updated for c in cols), default=(base / space).stat().st_mtime)
        hit = everything
        if model is not None:
            hit = model in (name, Path(name).name) or (len(model) >= 6 and sha.startswith(model))
        if older_than_days is not None:
            old = (time.time() - newest) > older_than_days * 86400
            hit = old if model is None else (hit and old)
        if hit:
            shutil.rmtree(base / space)
            removed.append(space)
    return removed
