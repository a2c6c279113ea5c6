"""Format detection: each family adapter says whether it recognises a checkpoint, then builds it."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import InputError
from .base import LoadedModel, LoadOptions
from .checkpoint import read_checkpoint, sha256_file

# Adapter modules, tried in order; each exposes FAMILY, detect(raw) and load(raw, opts, source, sha256).
# dinov2 and timm_vit come before dino_vit: their files also carry DINO's cls_token / pos_embed / patch_embed keys.
# openclip_towers (ResNet / timm-trunk CLIPs) comes before openclip_vit, which would claim a ResNet CLIP by its
# `visual.conv1.weight`; it hands plain ViT CLIPs to openclip_vit, so `--family openclip` covers every tower.
FAMILIES = ["torchvision_vit", "dinov2", "timm_vit", "dino_vit", "openclip_towers", "openclip_vit", "resnet"]


def _adapters():
    for name in FAMILIES:
        try:
            yield importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{name}":
                raise


def load_model(checkpoint: str | Path, opts: LoadOptions | None = None, store_root: Path | None = None) -> LoadedModel:
    """Load a checkpoint file, or a hub name like `torchvision:vit_b_16` / `timm:NAME` / `openclip:ARCH/TAG`.

    With `store_root` (the feature store a command will read), a file that loaded in full before with the
    same options comes back as a `LazyLoadedModel` (no module built until `.backbone` is used), and a full
    load is remembered there once the store exists (`lazy.remember`, called by the extraction).
    """
    opts = opts or LoadOptions()
    text = str(checkpoint)
    if ":" in text and not Path(text).exists() and text.split(":", 1)[0] in ("torchvision", "timm", "openclip"):
        from .hub import load_hub

        return _with_options(load_hub(text, opts), opts)
    path = Path(text)
    if store_root is None or not path.is_file():
        return _load_file(path, opts)
    from . import lazy

    try:
        stat, sha = _file_hash(path, Path(store_root))
    except OSError:
        return _load_file(path, opts)  # unreadable: the full load says why, in one line
    key = lazy.record_key(path, sha, opts)
    record = lazy.read_record(store_root, key)
    if record is not None and record.get("sha256") == sha:
        return lazy.lazy_model(record, opts, lambda: _load_file(path, opts))
    model = _load_file(path, opts, sha)
    model.__dict__["_pending_record"] = (Path(store_root), key, path, stat, sha)
    return model


def _file_hash(path: Path, store_root: Path):
    """(stat, sha256): from the store's hash memo when the file is unchanged since it was hashed."""
    import os

    st = os.stat(path)
    memo = store_root / "hashes.sqlite"
    if memo.is_file():
        from ..engine.hashing import content_hashes

        sha = content_hashes([path], memo)[0]
        if sha is not None:
            return None, sha  # content_hashes stored it
    return st, sha256_file(path)


def _load_file(path: Path, opts: LoadOptions, sha: str | None = None) -> LoadedModel:
    raw = read_checkpoint(path, trust=opts.trust)
    sha = sha or sha256_file(path)
    adapters = list(_adapters())
    family = opts.family or ("timm" if opts.arch else None)  # --arch names a timm model: the timm adapter builds it
    if opts.arch and family != "timm":
        raise InputError(f"--arch {opts.arch} names a timm model: it does not apply to --family {family}")
    if family:
        chosen = [a for a in adapters if a.FAMILY == family]
        if not chosen:
            raise InputError(f"unknown --family {family!r}; known: {', '.join(a.FAMILY for a in adapters)}")
        return _with_options(chosen[0].load(raw, opts, str(path), sha), opts)
    for adapter in adapters:
        if adapter.detect(raw):
            return _with_options(adapter.load(raw, opts, str(path), sha), opts)
    keys = list(raw)[:6] if isinstance(raw, dict) else type(raw).__name__
    raise InputError(f"{path}: unrecognised checkpoint format (top-level keys: {keys})")


def _with_options(model: LoadedModel, opts: LoadOptions) -> LoadedModel:
    """Remember how the model was loaded: options that change outputs belong in the cache key."""
    model.load_options = opts
    return model
