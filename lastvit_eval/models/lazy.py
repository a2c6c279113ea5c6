"""Plan without weights: a checkpoint that loaded once is remembered, so a later command needs no module.

Building a model costs seconds a command on stored images does not need (ViT-B/16 on a 2-core CPU:
torchvision's import about 1 s, building 0.6 s, reading and strictly loading the weights 0.3 s, hashing
the file 0.6 s). The feature store's key needs only what loading *learned* (architecture, transform, key
mapping, sha256), so after a full load succeeded that is written to `<store>/models/<key>.json`, and a
later load of the same file (same sha256, memoized by stat like the images), with the same options, the
same model code (`code_fingerprint`) and the same libraries returns a `LazyLoadedModel`: its `backbone`
is built by the full load on first access, i.e. only when an image has to be forwarded.

No load error is deferred: a record exists only for a (file content, options, code, libraries) that
loaded without error, and loading is a function of exactly those, so every error knowable from the file
(format, missing or unexpected keys, shape mismatch, non-finite weights, refused pickles) is still
raised at plan time, by the full load, for any file that has no record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..data.transform import TransformSpec
from ..errors import LastvitError
from .base import ArchSpec, Backbone, KeyReport, LoadedModel, LoadOptions

MEMO_DIR = "models"
FORMAT = 2  # 2: records has_map_head
_TYPES = {"arch": ArchSpec, "transform": TransformSpec, "keys": KeyReport}
_SKIP = ("backbone", "load_options")  # the module itself; the options are part of the key
builds = 0  # full loads done to materialize a LazyLoadedModel (tests count them)


def record_key(path: Path, sha256: str, opts: LoadOptions) -> str:
    """Everything the full load is a function of: file content and place, options, model code, libraries."""
    from ..engine.fingerprint import code_fingerprint, library_versions

    parts = {"format": FORMAT, "path": os.path.abspath(path), "sha256": sha256, "options": dataclasses.asdict(opts),
             "code": code_fingerprint(), "libraries": library_versions()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def to_record(model: LoadedModel) -> dict | None:
    """What loading learned, as JSON; None when a field is of a kind this module cannot restore."""
    out: dict = {}
    for f in dataclasses.fields(LoadedModel):
        if f.name in _SKIP:
            continue
        value = getattr(model, f.name)
        if f.name in _TYPES:
            if type(value) is not _TYPES[f.name]:
                return None
            value = dataclasses.asdict(value)
        elif not (value is None or isinstance(value, (str, int, float, bool))):
            return None
        out[f.name] = value
    out["has_map_head"] = bool(model.backbone.has_map_head)  # a property of the module: planning needs it unbuilt
    return out


def _canonical(record: dict | None) -> str:
    return json.dumps(record, sort_keys=True, default=str)


def _restore(cls, data: dict):
    frozen = cls.__dataclass_params__.frozen  # frozen specs hold tuples (JSON gave lists)
    return cls(**{k: (tuple(v) if frozen and isinstance(v, list) else v) for k, v in data.items()})


class LazyLoadedModel(LoadedModel):
    """A LoadedModel from a record: metadata now, the module on first `.backbone` access.

    Not a dataclass itself: LoadedModel's __init__ assigns `self.backbone`, which lands in the setter.
    """

    @property  # type: ignore[override]
    def backbone(self) -> Backbone:
        bb = self.__dict__.get("_backbone")
        if bb is None:
            bb = self.__dict__["_materialize"]()
            self.__dict__["_backbone"] = bb
        return bb

    @backbone.setter
    def backbone(self, value: Backbone | None) -> None:
        self.__dict__["_backbone"] = value

    @property
    def has_map_head(self) -> bool:
        return self.__dict__["_has_map_head"]

    @property
    def materialized(self) -> bool:
        return self.__dict__.get("_backbone") is not None

    def __repr__(self) -> str:  # the dataclass repr would read .backbone, i.e. build the model
        return f"LazyLoadedModel({self.source!r}, {self.arch.name}, materialized={self.materialized})"


def lazy_model(record: dict, opts: LoadOptions, load: Callable[[], LoadedModel]) -> LazyLoadedModel:
    """A model from `record` whose backbone comes from `load()` (the full load), checked against the record."""
    fields = {k: (_restore(_TYPES[k], v) if k in _TYPES else v) for k, v in record.items() if k != "has_map_head"}
    model = LazyLoadedModel(backbone=None, load_options=opts, **fields)  # type: ignore[arg-type]
    model.__dict__["_has_map_head"] = bool(record.get("has_map_head"))

    def materialize() -> Backbone:
        global builds
        full = load()
        builds += 1
        if _canonical(to_record(full)) != _canonical(record):
            raise LastvitError(f"{model.source}: loads differently from when this command was planned (the file, "
                               "the model code or a library changed meanwhile); run the command again")
        return full.backbone

    model.__dict__["_materialize"] = materialize
    return model


def read_record(root: Path, key: str) -> dict | None:
    try:
        data = json.loads((Path(root) / MEMO_DIR / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None  # none yet, or damaged: the full load decides
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("model"), dict):
        return None
    try:
        _ = [_restore(_TYPES[k], data["model"][k]) for k in _TYPES]
        _ = bool(data["model"]["has_map_head"])
    except (KeyError, TypeError):
        return None
    return data["model"]


def write_record(root: Path, key: str, model: LoadedModel) -> None:
    """Remember a successful full load (best effort: a read-only store only costs the next load)."""
    record = to_record(model)
    if record is None:
        return
    folder = Path(root) / MEMO_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"format": FORMAT, "model": record}, f, indent=1, default=str)
        os.replace(tmp, folder / f"{key}.json")
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def remember(model: LoadedModel) -> None:
    """Called once the feature store exists: write the record (and the file's hash memo) for a model that
    was loaded in full with a store in view (`pending_record`)."""
    pending = model.__dict__.pop("_pending_record", None)
    if pending is None:
        return
    root, key, path, stat, sha = pending
    write_record(root, key, model)
    if stat is not None:
        from ..engine.hashing import record_hashes

        record_hashes(Path(root) / "hashes.sqlite", [(os.path.abspath(path), stat, sha)])

