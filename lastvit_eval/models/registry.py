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


def load_model(checkpoint: str | Path, opts: LoadOptions | None = None) -> LoadedModel:
    """Load a checkpoint file, or a hub name like `torchvision:vit_b_16` / `timm:NAME` / `openclip:ARCH/TAG`."""
    opts = opts or LoadOptions()
    text = str(checkpoint)
    if ":" in text and not Path(text).exists() and text.split(":", 1)[0] in ("torchvision", "timm", "openclip"):
        from .hub import load_hub

        return _with_options(load_hub(text, opts), opts)
    path = Path(text)
    raw = read_checkpoint(path, trust=opts.trust)
    sha = sha256_file(path)
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
