"""Baselines by name: `torchvision:vit_b_16[/WEIGHTS]`, `timm:NAME`, `openclip:ARCH/TAG`.

Weights come through each library's own download code and cache. The cached file is looked up first,
without touching the network; offline (HF_HUB_OFFLINE=1 or LASTVIT_EVAL_OFFLINE=1) a file missing from
the cache is one clear InputError. Random weights are never a fallback: a name without released
weights is an error.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from urllib.parse import urlparse

from ..data.transform import TransformSpec, open_clip_resize_mode
from ..errors import InputError
from .arch_config import openclip_hint, torchvision_hint
from .base import LoadedModel, LoadOptions
from .checkpoint import read_checkpoint, sha256_file

HF_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("LASTVIT_EVAL_OFFLINE", "HF_HUB_OFFLINE"))


def _missing(name: str, what: str, detail: str = "") -> InputError:
    mode = "offline mode" if offline() else "could not download"
    extra = f" ({detail})" if detail else ""
    return InputError(
        f"{name}: pretrained weights not available ({mode}: {what} is not in the local cache{extra}); "
        "download it on a machine with network access, or pass --checkpoint /path/to/weights.pth"
    )


def _hf_cache_dir() -> str:
    """Read at call time (huggingface_hub reads HF_HOME once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return os.path.join(home, "hub")


def cached_hf(repo: str, filenames: tuple[str, ...]) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for f in filenames:
        hit = try_to_load_from_cache(repo, f, cache_dir=_hf_cache_dir())
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None


def cached_url(url: str, folder: str | None = None) -> Path:
    """Where torch.hub (or open_clip's url download, given `folder`) keeps a downloaded url."""
    import torch.hub

    base = folder or os.path.join(torch.hub.get_dir(), "checkpoints")
    return Path(base) / os.path.basename(urlparse(url).path)


def load_hub(name: str, opts: LoadOptions) -> LoadedModel:
    lib, _, rest = name.partition(":")
    if not rest:
        raise InputError(f"{name}: expected {lib}:NAME")
    if opts.arch:
        raise InputError(f"{name}: --arch does not apply to hub names (the name is the architecture); drop it")
    if lib == "torchvision":
        return _torchvision(name, rest, opts)
    if lib == "timm":
        return _timm(name, rest, opts)
    if lib == "openclip":
        return _openclip(name, rest, opts)
    raise InputError(f"{name}: unknown hub {lib!r} (use torchvision:, timm: or openclip:)")


def _torchvision(name: str, rest: str, opts: LoadOptions) -> LoadedModel:
    from torchvision.models import get_model_weights

    from . import torchvision_vit

    arch, _, tag = rest.partition("/")
    if not arch.startswith(("vit_", "resnet", "wide_resnet")):
        raise InputError(f"{name}: only torchvision ViTs (vit_*) and ResNets (resnet*) are supported")
    try:
        enum = get_model_weights(arch)
    except (ValueError, KeyError):
        raise InputError(f"{name}: torchvision has no model {arch!r}") from None
    try:
        weights = enum[tag] if tag else enum.DEFAULT
    except KeyError:
        raise InputError(f"{name}: unknown weights {tag!r}; known: {', '.join(w.name for w in enum)}") from None
    path = cached_url(weights.url)
    if not path.is_file():
        if offline():
            raise _missing(name, path.name, str(path))
        try:
            weights.get_state_dict(progress=False, check_hash=True)
        except Exception as e:  # noqa: BLE001 - any download failure is the same user-facing problem
            raise _missing(name, path.name, f"{type(e).__name__}: {e}") from None
    raw = read_checkpoint(path, trust=opts.trust)
    if arch.startswith("vit_"):
        hint = torchvision_hint(arch, f"torchvision {arch}", origin="library config")
        model = torchvision_vit.load(raw, opts, name, sha256_file(path), hint=hint)
    else:
        from . import resnet

        model = resnet.load(raw, opts, name, sha256_file(path), hint=arch)
    t = weights.transforms()
    spec = TransformSpec(resize=int(t.resize_size[0]), crop=int(t.crop_size[0]), interpolation=t.interpolation.value,
                         mean=tuple(t.mean), std=tuple(t.std))
    if opts.image_size:  # the weights' recipe at the new size (resize / crop ratio kept)
        from .resolution import scale_transform

        spec = scale_transform(spec, model.arch.image_size)
    model.keys.steps.insert(0, f"torchvision weights {weights} from {path}")
    return dataclasses.replace(model, transform=spec)


def _timm(name: str, rest: str, opts: LoadOptions) -> LoadedModel:
    import timm
    from timm.models import get_pretrained_cfg

    from .base import ArchSpec, KeyReport
    from .dino_vit import TimmBackbone
    from .keys import check_finite

    _refuse_for_timm(name, opts)
    try:
        cfg = get_pretrained_cfg(rest)
    except Exception:  # noqa: BLE001 - timm raises different errors for malformed names
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise InputError(f"{name}: timm has no pretrained weights under this name (e.g. vit_base_patch16_224.dino)")
    path: Path | None = None
    if cfg.file and os.path.isfile(cfg.file):
        path = Path(cfg.file)
    elif cfg.hf_hub_id:
        files = ((cfg.hf_hub_filename,) if cfg.hf_hub_filename else ()) + HF_FILES
        path = cached_hf(cfg.hf_hub_id, files)
    if path is None and cfg.url and cached_url(cfg.url).is_file():
        path = cached_url(cfg.url)
    try:
        if path is not None:
            model = timm.create_model(rest, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        elif offline():
            raise _missing(name, cfg.hf_hub_id or cfg.url or rest)
        else:
            model = timm.create_model(rest, pretrained=True)
            path = cached_hf(cfg.hf_hub_id, HF_FILES) if cfg.hf_hub_id else None
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        if path is not None:  # the file is there: timm could not load it, which is not a download problem
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise InputError(f"{name}: timm could not load {path} ({type(e).__name__}: {first})") from None
        raise _missing(name, cfg.hf_hub_id or cfg.url or rest, f"{type(e).__name__}: {e}") from None
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    from .resolution import timm_set_size
    from .timm_vit import mlp_hidden, pooling_details, timm_transform

    if not isinstance(model, (VisionTransformer, Eva)):
        raise InputError(f"{name}: {type(model).__name__} is not a timm VisionTransformer or Eva")
    model.eval().requires_grad_(False)
    pe = model.patch_embed
    native = int(pe.img_size[0])
    resampled = timm_set_size(model, opts.image_size, name) if opts.image_size else []
    grid = pe.grid_size[0]
    patch = pe.patch_size[0]
    transform = timm_transform(model, grid * patch)
    blk = model.blocks[0]
    heads = int(blk.attn.num_heads)
    if opts.num_heads is not None and opts.num_heads != heads:
        raise InputError(f"{name}: --num-heads {opts.num_heads} contradicts timm's config for {rest!r} ({heads} heads "
                         f"of width {model.embed_dim // heads}; patch_embed.proj.weight "
                         f"{tuple(pe.proj.weight.shape)}); drop --num-heads")
    arch = ArchSpec(family="timm", name=rest, image_size=grid * patch, patch_size=patch, width=model.embed_dim,
                    depth=len(model.blocks), heads=heads, mlp_dim=mlp_hidden(blk),
                    num_prefix_tokens=int(model.num_prefix_tokens),
                    num_classes=model.num_classes or None,
                    heads_source="--num-heads" if opts.num_heads is not None else "library config",
                    config=f"timm {rest}",
                    num_registers=int(model.reg_token.shape[1]) if getattr(model, "reg_token", None) is not None else 0,
                    native_image_size=native if native != grid * patch else None)
    report = KeyReport(format="timm pretrained", steps=[f"timm.create_model({rest!r}, pretrained=True) from {path}",
                                                        *resampled])
    check_finite(model.state_dict(), name, report, arch)
    backbone = TimmBackbone(model)
    backbone.details = pooling_details(model)
    return LoadedModel(backbone=backbone, arch=arch, transform=transform, keys=report, source=name,
                       sha256=sha256_file(path) if path is not None else None,
                       params=sum(p.numel() for p in model.parameters()))


def _refuse_for_timm(name: str, opts: LoadOptions) -> None:
    """timm loads its own weights (always weights_only, strict, its own key filter): options that change how a
    file is read would be silently ignored, so they are refused; --num-heads is checked against timm's config."""
    if opts.ignore_keys:
        raise InputError(f"{name}: --ignore-keys does not apply to timm: names (timm loads its weights strictly "
                         "with its own key filter); pass the weights file with --checkpoint PATH to drop keys")
    if opts.trust:
        raise InputError(f"{name}: --trust-checkpoint does not apply to timm: names (timm only loads plain "
                         "weights, never pickled objects); drop the flag")
    for flag, value in (("--checkpoint-key", opts.checkpoint_key), ("--family", opts.family),
                        ("--quick-gelu/--no-quick-gelu", opts.quick_gelu)):
        if value is not None:
            raise InputError(f"{name}: {flag} does not apply to timm: names (timm's config decides); drop it")


def _openclip(name: str, rest: str, opts: LoadOptions) -> LoadedModel:
    import open_clip

    from . import openclip_vit

    arch, _, tag = rest.partition("/")
    if not tag:
        raise InputError(f"{name}: expected openclip:ARCH/TAG, e.g. openclip:ViT-B-16/openai")
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise InputError(f"{name}: open_clip has no weights {tag!r} for {arch!r}; known: {', '.join(tags) or 'none'}")
    path: Path | None = None
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, fname = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        path = cached_hf(repo, ((fname,) if fname else ()) + HF_FILES)
    if path is None and cfg.get("url"):
        c = cached_url(cfg["url"], os.path.expanduser("~/.cache/clip"))
        path = c if c.is_file() else None
    if path is None:
        if offline():
            raise _missing(name, hub or cfg.get("url", ""))
        try:
            path = Path(open_clip.pretrained.download_pretrained(cfg))
        except Exception as e:  # noqa: BLE001
            raise _missing(name, hub or cfg.get("url", ""), f"{type(e).__name__}: {e}") from None
    raw = read_checkpoint(path, trust=opts.trust)
    if opts.quick_gelu is None:
        opts = dataclasses.replace(opts, quick_gelu=bool(cfg.get("quick_gelu", False)))
    model_cfg = open_clip.get_model_config(arch) or {}
    vision = model_cfg.get("vision_cfg") or {}
    if "timm_model_name" in vision or isinstance(vision.get("layers"), (list, tuple)):  # timm trunk or ResNet tower
        from . import openclip_towers

        model = openclip_towers.load(raw, opts, name, sha256_file(path), model_cfg=model_cfg,
                                     cfg_where=f"open_clip {arch}")
    else:
        hint = openclip_hint(arch, f"open_clip {arch}", origin="library config")
        model = openclip_vit.load(raw, opts, name, sha256_file(path), hint=hint)
    model.keys.steps.insert(0, f"open_clip pretrained {arch}/{tag} from {path}")
    t = model.transform
    spec = dataclasses.replace(t, mean=tuple(cfg.get("mean", t.mean)), std=tuple(cfg.get("std", t.std)),
                               interpolation=cfg.get("interpolation", t.interpolation))
    mode = cfg.get("resize_mode")
    spec = open_clip_resize_mode(spec, mode, name)  # e.g. SigLIP's squash, reproduced
    if spec.kind != "resize-crop":  # a step only then: store keys of 'shortest' models unchanged
        model.keys.steps.append(f"preprocessing: open_clip resize_mode={mode!r} for {arch}/{tag} ({spec.kind})")
    return dataclasses.replace(model, transform=spec)
