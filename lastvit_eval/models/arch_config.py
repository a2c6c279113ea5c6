"""What a checkpoint's own config says about its architecture, and the head count that follows.

The head count is invisible in the tensors (a fused qkv is [3D, D] for any number of heads), so a checkpoint
with a standard width and non-standard heads would load cleanly and give wrong features. Where the file
carries a config (DINO `args.arch`, a timm training checkpoint's `arch` / `args.model`, torchvision
references' `args.model`, an OpenCLIP run name) it is read and checked against the tensors; where it does not,
the head count is taken from the standard ViT table and recorded as assumed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError

# Heads by width, as in the standard ViT table (Ti, S, B, L, H, g/G).
STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1536: 24, 1664: 16}

# DINO's own architectures (facebookresearch/dino vision_transformer.py): not timm names, so listed here.
DINO_ARCHS = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12),
              "deit_tiny": (192, 3), "deit_small": (384, 6)}


@dataclass(frozen=True)
class ArchHint:
    """Architecture facts from a config; None where the config does not say."""

    where: str  # e.g. "args.arch='vit_small' (DINO)"
    heads: int | None
    width: int | None = None
    patch: int | None = None
    origin: str = "checkpoint config"  # or "library config" for hub names


def _field(obj: Any, name: str) -> Any:
    """`args.name` for an argparse Namespace (or any object), `args[name]` for a dict."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def timm_hint(name: str, where: str, origin: str = "checkpoint config") -> ArchHint | None:
    """Build timm's model on the meta device (no memory, no download) and read its shape facts."""
    if ":" in name:  # hf-hub:/local-dir: names would fetch or read a config elsewhere: not the file's own
        return None
    try:
        import timm

        with torch.device("meta"):
            m = timm.create_model(name, pretrained=False)
        return ArchHint(where, int(m.blocks[0].attn.num_heads), int(m.embed_dim), int(m.patch_embed.patch_size[0]),
                        origin)
    except Exception:  # noqa: BLE001 - unknown names and non-ViT models just carry no hint
        return None


def torchvision_hint(name: str, where: str, origin: str = "checkpoint config") -> ArchHint | None:
    try:
        import torchvision

        with torch.device("meta"):
            m = torchvision.models.get_model(name)
        return ArchHint(where, int(m.encoder.layers[0].num_heads), int(m.hidden_dim), int(m.patch_size), origin)
    except Exception:  # noqa: BLE001
        return None


def openclip_hint(name: str, where: str, origin: str = "checkpoint config") -> ArchHint | None:
    try:
        import open_clip

        cfg = open_clip.get_model_config(name)
    except Exception:  # noqa: BLE001
        return None
    v = (cfg or {}).get("vision_cfg")
    if not v or "width" not in v or isinstance(v.get("layers"), (list, tuple)):  # ResNet towers: no heads
        return None
    width = int(v["width"])
    return ArchHint(where, width // int(v.get("head_width", 64)), width, int(v.get("patch_size", 0)) or None, origin)


def dino_or_timm_hint(raw: Any) -> ArchHint | None:
    """DINO `args.arch`, a timm training checkpoint's `arch` / `args.model`, or a `pretrained_cfg`."""
    if not isinstance(raw, dict):
        return None
    args = raw.get("args")
    arch = _field(args, "arch") if args is not None else None
    if isinstance(arch, str) and arch:
        patch = _field(args, "patch_size")
        if arch in DINO_ARCHS:
            width, heads = DINO_ARCHS[arch]
            return ArchHint(f"args.arch={arch!r} (DINO)", heads, width, int(patch) if isinstance(patch, int) else None)
        return timm_hint(arch, f"args.arch={arch!r}")
    for where, name in (("checkpoint['arch']", raw.get("arch")),
                        ("args.model", _field(args, "model") if args is not None else None),
                        ("pretrained_cfg['architecture']", _field(raw.get("pretrained_cfg") or {}, "architecture"))):
        if isinstance(name, str) and name:
            return timm_hint(name, f"{where}={name!r} (timm)")
    return None


def torchvision_ref_hint(raw: Any) -> ArchHint | None:
    """torchvision's reference training scripts save `args` with `model` (e.g. vit_b_16)."""
    if not isinstance(raw, dict) or raw.get("args") is None:
        return None
    name = _field(raw["args"], "model")
    if isinstance(name, str) and name:
        return torchvision_hint(name, f"args.model={name!r} (torchvision references)")
    return None


def openclip_run_hint(run_name: str | None) -> ArchHint | None:
    """open_clip's default run name embeds the model: `<date>-model_<MODEL>-lr_<lr>-b_<bs>-...`."""
    if not run_name:
        return None
    m = re.search(r"(?:^|-)model_(.+?)(?:-lr_|$)", run_name)
    if not m:
        return None
    return openclip_hint(m.group(1), f"run name model {m.group(1)!r} (OpenCLIP)")


def resolve_heads(width: int, shape_desc: str, patch: int, override: int | None, hint: ArchHint | None,
                  source: str) -> tuple[int, str, str | None]:
    """(heads, heads_source, config description) for a tensor width, checked against the config and flag.

    `shape_desc` names the tensor the width was read from (e.g. "patch_embed.proj.weight (192, 3, 8, 8)") so
    every refusal says which shapes disagree.
    """
    if hint is not None:
        if hint.width is not None and hint.width != width:
            raise InputError(f"{source}: config {hint.where} means width {hint.width} with {hint.heads} heads, "
                             f"but the tensors have width {width} ({shape_desc})")
        if hint.patch is not None and hint.patch != patch:
            raise InputError(f"{source}: config {hint.where} means patch size {hint.patch}, "
                             f"but the tensors have patch size {patch} ({shape_desc})")
    if override is not None:
        if override <= 0 or width % override:
            raise InputError(f"{source}: --num-heads {override} does not divide the width {width} ({shape_desc})")
        if hint is not None and hint.heads is not None and hint.heads != override:
            raise InputError(f"{source}: --num-heads {override} contradicts the checkpoint's config {hint.where} "
                             f"({hint.heads} heads of width {width // hint.heads}; tensors: {shape_desc})")
        return override, "--num-heads", hint.where if hint else None
    if hint is not None and hint.heads is not None:
        if hint.heads <= 0 or width % hint.heads:
            raise InputError(f"{source}: config {hint.where} says {hint.heads} heads, which do not divide the "
                             f"width {width} ({shape_desc})")
        return hint.heads, hint.origin, hint.where
    if width not in STANDARD_HEADS:
        raise InputError(f"{source}: width {width} ({shape_desc}) is not in the standard ViT table "
                         f"{sorted(STANDARD_HEADS)} and the checkpoint carries no config; pass --num-heads")
    return STANDARD_HEADS[width], "assumed from width", None
