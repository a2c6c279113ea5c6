"""Feature files written by `extract` and read back by evaluators (`--train-features/--test-features`).

One file holds arrays keyed like the forward taps (`pooled/cls`, `embedding/last-k1`, `logits/gap`,
`patch_tokens`), plus `labels`, `image_ids`, `classes` and a JSON `meta` record (provenance). Two
containers: `.npz` (numpy, no pickles: strings are stored as unicode arrays) and `.safetensors`
(tensors only; ids, classes and meta go into its string metadata).
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

FORMAT_VERSION = 1
SUFFIXES = (".npz", ".safetensors")


@dataclass
class FeatureSet:
    arrays: dict[str, np.ndarray]  # tap key -> [n, ...]
    labels: np.ndarray  # [n] int64, -1 when unknown
    image_ids: list[str]
    classes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        if len(self.labels) != n:
            raise InputError(f"features: {len(self.labels)} labels for {n} image ids")
        for k, v in self.arrays.items():
            if len(v) != n:
                raise InputError(f"features: array {k!r} has {len(v)} rows for {n} image ids")

    def get(self, key: str, source: str = "features") -> np.ndarray:
        if key not in self.arrays:
            raise InputError(f"{source}: no array {key!r} (has: {', '.join(sorted(self.arrays))})")
        return self.arrays[key]


def _check_suffix(path: Path) -> None:
    if path.suffix not in SUFFIXES:
        raise InputError(f"{path}: feature files must end in .npz or .safetensors")


def save_features(path: Path, fs: FeatureSet) -> Path:
    """Write atomically (temp file + rename), so a killed run never leaves a truncated file."""
    path = Path(path)
    _check_suffix(path)
    meta = {"format_version": FORMAT_VERSION, **fs.meta}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(tmp, path, fs, meta)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write ({e.strerror or e})") from None
    return path


def _write(tmp: Path, path: Path, fs: FeatureSet, meta: dict) -> None:
    if path.suffix == ".npz":
        payload = {f"a/{k}": np.ascontiguousarray(v) for k, v in fs.arrays.items()}
        payload["labels"] = np.asarray(fs.labels, dtype=np.int64)
        payload["image_ids"] = np.asarray(fs.image_ids, dtype=np.str_)
        payload["classes"] = np.asarray(fs.classes, dtype=np.str_)
        payload["meta"] = np.asarray(json.dumps(meta))
        with open(tmp, "wb") as f:
            np.savez(f, **payload)
    else:
        import torch
        from safetensors.torch import save_file

        tensors = {f"a/{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in fs.arrays.items()}
        tensors["labels"] = torch.from_numpy(np.asarray(fs.labels, dtype=np.int64))
        strings = {"image_ids": json.dumps(list(fs.image_ids)), "classes": json.dumps(list(fs.classes)),
                   "meta": json.dumps(meta)}
        save_file(tensors, str(tmp), metadata=strings)


def load_features(path: Path) -> FeatureSet:
    from safetensors import SafetensorError

    path = Path(path)
    _check_suffix(path)
    if not path.is_file():
        raise InputError(f"{path}: feature file not found")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k[2:]: z[k] for k in z.files if k.startswith("a/")}
                labels = z["labels"]
                ids = [str(s) for s in z["image_ids"]]
                classes = [str(s) for s in z["classes"]]
                meta = json.loads(str(z["meta"]))
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="np") as f:
                md = f.metadata() or {}
                arrays = {k[2:]: f.get_tensor(k) for k in f.keys() if k.startswith("a/")}
                labels = f.get_tensor("labels")
                ids = json.loads(md["image_ids"])
                classes = json.loads(md.get("classes", "[]"))
                meta = json.loads(md.get("meta", "{}"))
    except (KeyError, ValueError, OSError, EOFError, SafetensorError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a lastvit-eval feature file ({type(e).__name__}: {e})") from None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iuf" or (
            labels.dtype.kind == "f" and not (np.isfinite(labels).all() and (labels == np.round(labels)).all())):
        raise InputError(f"{path}: labels must be whole numbers (got dtype {labels.dtype}"
                         + (f", e.g. {labels[~(labels == np.round(labels))][0]}" if labels.dtype.kind == "f"
                            and labels.ndim == 1 and (labels != np.round(labels)).any() else "") + ")")
    return FeatureSet(arrays=arrays, labels=labels.astype(np.int64), image_ids=ids, classes=classes, meta=meta)
