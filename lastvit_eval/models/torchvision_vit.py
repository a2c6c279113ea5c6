"""Label-supervised torchvision ViTs: plain state dicts, detectron2 {'model': ...} wrappers, DDP prefixes."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import torch

from ..data.transform import torchvision_vit
from ..errors import InputError
from .arch_config import ArchHint, resolve_heads, torchvision_ref_hint
from .base import ArchSpec, Backbone, KeyReport, LoadedModel, LoadOptions
from .keys import (
    drop_keys,
    is_state_dict,
    strict_load,
    strip_if_all,
    take_wrapper,
    to_float32,
    vit_name,
)

if TYPE_CHECKING:  # torchvision's model module is imported where a model is built: detection stays cheap
    from torchvision.models import VisionTransformer

FAMILY = "torchvision"


def unwrap(raw) -> tuple[dict, KeyReport] | None:
    """Find a torchvision ViT state dict inside the raw checkpoint object, recording each step."""
    report = KeyReport(format="state_dict")
    obj = take_wrapper(raw, ("model", "state_dict", "model_state_dict"), report)
    if not is_state_dict(obj):
        return None
    sd = dict(obj)
    for prefix in ("module.", "model.", "module."):
        sd = strip_if_all(sd, prefix, report.steps)
    if "conv_proj.weight" not in sd or "encoder.pos_embedding" not in sd:
        return None
    if report.format == "{'model': ...}" and "stripped prefix 'model.'" in report.steps:
        report.format = "detectron2 {'model': {'model.*': ...}}"
    return sd, report


def detect(raw) -> bool:
    return unwrap(raw) is not None


def infer_arch(sd: dict, opts: LoadOptions, source: str, hint: ArchHint | None = None) -> ArchSpec:
    width, _, patch, patch_w = sd["conv_proj.weight"].shape
    if patch != patch_w:
        raise InputError(f"{source}: non-square patches {patch}x{patch_w} are not supported")
    seq = sd["encoder.pos_embedding"].shape[1]
    grid = math.isqrt(seq - 1)
    if grid * grid != seq - 1:
        raise InputError(f"{source}: encoder.pos_embedding has {seq} tokens, not 1 + a square grid")
    depth = len({m.group(1) for k in sd if (m := re.match(r"encoder\.layers\.encoder_layer_(\d+)\.", k))})
    if depth == 0:
        raise InputError(f"{source}: no encoder.layers.encoder_layer_* tensors found")
    mlp_key = "encoder.layers.encoder_layer_0.mlp.0.weight"
    if mlp_key not in sd:
        raise InputError(f"{source}: missing key {mlp_key!r}")
    mlp_dim = sd[mlp_key].shape[0]
    num_classes = sd["heads.head.weight"].shape[0] if "heads.head.weight" in sd else None
    image = grid * patch
    name = vit_name(width, patch)
    shape = f"conv_proj.weight {tuple(sd['conv_proj.weight'].shape)}"
    heads, heads_source, config = resolve_heads(width, shape, patch, opts.num_heads, hint, source)
    return ArchSpec(
        family=FAMILY,
        name=name,
        image_size=image,
        patch_size=patch,
        width=width,
        depth=depth,
        heads=heads,
        mlp_dim=mlp_dim,
        num_prefix_tokens=1,
        num_classes=num_classes,
        heads_source=heads_source,
        config=config,
    )


def _resize(model: VisionTransformer, arch: ArchSpec, size: int | None, source: str, report: KeyReport) -> ArchSpec:
    """--image-size: torchvision's own `interpolate_embeddings` (bicubic) on the loaded position embeddings."""
    if not size or size == arch.image_size:
        return arch
    import dataclasses

    from torchvision.models.vision_transformer import interpolate_embeddings

    from .resolution import check_image_size

    check_image_size(size, arch.patch_size, source)
    new = interpolate_embeddings(size, arch.patch_size, {"encoder.pos_embedding": model.encoder.pos_embedding.data})
    model.encoder.pos_embedding = torch.nn.Parameter(new["encoder.pos_embedding"], requires_grad=False)
    model.image_size = size
    g0, g1 = arch.grid[0], size // arch.patch_size
    report.steps.append(f"position embeddings interpolated {g0}x{g0} -> {g1}x{g1} for {size}px "
                        "(torchvision interpolate_embeddings, bicubic)")
    return dataclasses.replace(arch, image_size=size, native_image_size=arch.image_size)


class TorchvisionBackbone(Backbone):
    def __init__(self, model: VisionTransformer, has_head: bool) -> None:
        super().__init__()
        self.model = model
        self.has_head = has_head
        self.num_prefix_tokens = 1

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m._process_input(x)
        cls = m.class_token.expand(x.shape[0], -1, -1)
        return m.encoder(torch.cat([cls, x], dim=1))  # encoder ends with its LayerNorm (encoder.ln)

    def head(self, pooled: torch.Tensor) -> torch.Tensor | None:
        return self.model.heads(pooled) if self.has_head else None

    def blocks(self) -> list[torch.nn.Module]:
        return list(self.model.encoder.layers)  # pos_embedding is added before the first, ln after the last


def build(arch: ArchSpec) -> VisionTransformer:
    from torchvision.models import VisionTransformer

    model = VisionTransformer(
        image_size=arch.image_size,
        patch_size=arch.patch_size,
        num_layers=arch.depth,
        num_heads=arch.heads,
        hidden_dim=arch.width,
        mlp_dim=arch.mlp_dim,
        num_classes=arch.num_classes or 1000,
    )
    if arch.num_classes is None:
        model.heads = torch.nn.Sequential()
    return model


def load(raw, opts: LoadOptions, source: str, sha256: str | None, hint: ArchHint | None = None) -> LoadedModel:
    """`hint`: a config known from outside the file (a hub name); else read from the file (`args.model`)."""
    found = unwrap(raw)
    if found is None:
        raise InputError(f"{source}: not a torchvision ViT checkpoint (no conv_proj / encoder.pos_embedding)")
    sd, report = found
    sd, ignored = drop_keys(sd, opts.ignore_keys)
    report.ignored = ignored
    sd = to_float32(sd)
    arch = infer_arch(sd, opts, source, hint if hint is not None else torchvision_ref_hint(raw))
    model = build(arch)
    strict_load(model, sd, source, report, arch)
    arch = _resize(model, arch, opts.image_size, source, report)
    model.eval().requires_grad_(False)
    return LoadedModel(
        backbone=TorchvisionBackbone(model, has_head=arch.num_classes is not None),
        arch=arch,
        transform=torchvision_vit(arch.image_size),
        keys=report,
        source=source,
        sha256=sha256,
        params=sum(p.numel() for p in model.parameters()),
    )
