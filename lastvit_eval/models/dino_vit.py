"""Self-supervised DINO ViTs (and timm-layout ViT state dicts), built with timm.

Forms: main_dino training checkpoints (`teacher` keys `backbone.*`, `student` keys
`module.backbone.*`, the DINO projection head `head.*` dropped), and bare backbone state dicts as DINO
releases them (`cls_token`, `pos_embed`, `patch_embed.proj.weight`, `blocks.N.*`, `norm.*`). DINO's
key names are timm's, so the tensors load strictly into `timm...VisionTransformer`.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import torch

from ..data.transform import dino_vit
from ..errors import InputError
from ..pooling import Pooled
from .arch_config import ArchHint, dino_or_timm_hint, resolve_heads
from .base import ArchSpec, Backbone, KeyReport, LoadedModel, LoadOptions
from .keys import (
    drop_keys,
    is_state_dict,
    strict_load,
    strip_if_all,
    take_backbone,
    to_float32,
    vit_name,
)

if TYPE_CHECKING:  # timm is imported where a model is built: detecting a family stays cheap
    from timm.models.vision_transformer import VisionTransformer

FAMILY = "dino"
MAIN_DINO_KEYS = ("teacher", "student")
REQUIRED = ("cls_token", "pos_embed", "patch_embed.proj.weight")


def _pick(raw, opts: LoadOptions, report: KeyReport):
    """The sub-dictionary holding the weights: teacher/student for main_dino, else common wrappers."""
    if not isinstance(raw, dict):
        return None
    if opts.checkpoint_key is not None:
        if opts.checkpoint_key in raw:
            if opts.checkpoint_key in MAIN_DINO_KEYS:
                report.format = "main_dino {'teacher', 'student', ...}"
            report.steps.append(f"took checkpoint['{opts.checkpoint_key}'] (--checkpoint-key)")
            return raw[opts.checkpoint_key]
        if any(k in raw for k in MAIN_DINO_KEYS):
            raise InputError(
                f"--checkpoint-key {opts.checkpoint_key!r} not in the checkpoint (has: "
                f"{', '.join(k for k in raw if isinstance(raw[k], dict))})"
            )
        return raw
    if "teacher" in raw and isinstance(raw["teacher"], dict):
        report.format = "main_dino {'teacher', 'student', ...}"
        report.steps.append("took checkpoint['teacher'] (default; --checkpoint-key student for the student)")
        return raw["teacher"]
    for wrapper in ("model", "state_dict"):
        if wrapper in raw and is_state_dict(raw[wrapper]):
            report.format = f"{{'{wrapper}': ...}}"
            report.steps.append(f"took checkpoint['{wrapper}']")
            return raw[wrapper]
    return raw


def unwrap(raw, opts: LoadOptions | None = None) -> tuple[dict, KeyReport] | None:
    """Find a DINO/timm ViT backbone state dict, recording every step and every dropped key."""
    opts = opts or LoadOptions()
    report = KeyReport(format="state_dict (DINO backbone)")
    obj = _pick(raw, opts, report)
    if not is_state_dict(obj):
        return None
    sd = dict(obj)
    sd = strip_if_all(sd, "module.", report.steps)
    sd, _ = take_backbone(sd, report)
    if not all(k in sd for k in REQUIRED):
        return None
    return sd, report


def detect(raw) -> bool:
    return unwrap(raw) is not None


def _square(n: int) -> int | None:
    g = math.isqrt(n)
    return g if g * g == n else None


def infer_arch(sd: dict, opts: LoadOptions, source: str, hint: ArchHint | None = None) -> tuple[ArchSpec, dict]:
    """ArchSpec plus the timm constructor kwargs, all from tensor shapes."""
    width, chans, patch, patch_w = sd["patch_embed.proj.weight"].shape
    if patch != patch_w:
        raise InputError(f"{source}: non-square patches {patch}x{patch_w} are not supported")
    reg = sd["reg_token"].shape[1] if "reg_token" in sd else 0
    seq = sd["pos_embed"].shape[1]
    no_embed_class = False
    grid = _square(seq - 1)
    if grid is None and reg:
        grid, no_embed_class = _square(seq), True
    if grid is None:
        raise InputError(f"{source}: pos_embed has {seq} tokens, not 1 + a square grid")
    depth = len({m.group(1) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth == 0:
        raise InputError(f"{source}: no blocks.N.* tensors found")
    fc1 = "blocks.0.mlp.fc1.weight"
    if fc1 not in sd:
        raise InputError(f"{source}: missing key {fc1!r}")
    mlp_dim = sd[fc1].shape[0]
    num_classes = None
    if "head.weight" in sd and sd["head.weight"].ndim == 2 and sd["head.weight"].shape[1] == width:
        num_classes = int(sd["head.weight"].shape[0])
    shape = f"patch_embed.proj.weight {tuple(sd['patch_embed.proj.weight'].shape)}"
    heads, heads_source, config = resolve_heads(width, shape, patch, opts.num_heads, hint, source)
    kwargs = dict(
        img_size=grid * patch,
        patch_size=patch,
        in_chans=chans,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_dim / width,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        init_values=1e-5 if "blocks.0.ls1.gamma" in sd else None,
        reg_tokens=reg,
        no_embed_class=no_embed_class,
        num_classes=num_classes or 0,
    )
    arch = ArchSpec(
        family=FAMILY,
        name=vit_name(width, patch),
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        depth=depth,
        heads=heads,
        mlp_dim=mlp_dim,
        num_prefix_tokens=1 + reg,
        num_registers=reg,
        num_classes=num_classes,
        heads_source=heads_source,
        config=config,
    )
    return arch, kwargs


def timm_attn_pool(model, tokens: torch.Tensor) -> torch.Tensor:
    """A timm ViT / Eva's own attention-pool head (`global_pool='map'`) on its `forward_features` tokens, through
    the model's `pool` (which decides whether prefix tokens enter it); this is `forward_head`'s input to `fc_norm`."""
    pool = getattr(model, "pool", None)
    return pool(tokens) if callable(pool) else model.attn_pool(tokens)


class TimmBackbone(Backbone):
    """Any timm VisionTransformer: tokens are `forward_features` (after the final `norm`); `map` is the model's
    attention-pool head where it has one (`head(map)` = its own logits: fc_norm, then the classifier)."""

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__()
        self.model = model
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.has_head = not isinstance(model.head, torch.nn.Identity)
        self.has_map_head = getattr(model, "attn_pool", None) is not None

    def map_pool(self, tokens: torch.Tensor) -> Pooled | None:
        if not self.has_map_head:
            return None
        return Pooled(token=timm_attn_pool(self.model, tokens).float())

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def head(self, pooled: torch.Tensor) -> torch.Tensor | None:
        if not self.has_head:
            return None
        m = self.model
        return m.head(m.head_drop(m.fc_norm(pooled)))

    def blocks(self) -> list[torch.nn.Module]:
        return list(self.model.blocks)  # after _pos_embed / norm_pre, before the final norm


def load(raw, opts: LoadOptions, source: str, sha256: str | None, hint: ArchHint | None = None) -> LoadedModel:
    """`hint`: a config known from outside the file; else read from the file (DINO / timm `args`, `arch`)."""
    found = unwrap(raw, opts)
    if found is None:
        raise InputError(f"{source}: not a DINO ViT checkpoint (no {', '.join(REQUIRED)} after unwrapping)")
    sd, report = found
    sd, ignored = drop_keys(sd, opts.ignore_keys)
    report.ignored = ignored
    sd = to_float32(sd)
    arch, kwargs = infer_arch(sd, opts, source, hint if hint is not None else dino_or_timm_hint(raw))
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(**kwargs)
    strict_load(model, sd, source, report, arch)
    if opts.image_size and opts.image_size != arch.image_size:  # --image-size: timm resamples pos_embed
        import dataclasses

        from .resolution import timm_set_size

        report.steps += timm_set_size(model, opts.image_size, source)
        arch = dataclasses.replace(arch, image_size=opts.image_size, native_image_size=arch.image_size)
    model.eval().requires_grad_(False)
    return LoadedModel(
        backbone=TimmBackbone(model),
        arch=arch,
        transform=dino_vit(arch.image_size),
        keys=report,
        source=source,
        sha256=sha256,
        params=sum(p.numel() for p in model.parameters()),
    )
