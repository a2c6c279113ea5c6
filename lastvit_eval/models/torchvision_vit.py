"""Label-supervised torchvision ViTs: plain state dicts, detectron2 {'model': ...} wrappers, DDP prefixes.

Full resolution (`--resolution full`, `TorchvisionBackbone.at_full_resolution`): torchvision's
`VisionTransformer` asserts a square input of its `image_size`, and its only resampling is
`torchvision.models.vision_transformer.interpolate_embeddings`, applied once to a state dict for a square
`image_size`. `resample_pos_embedding` is that function generalised to a grid (gh, gw): the class-token row is
kept as is, the patch rows are reshaped to the native g x g grid and resampled with the same call,
`F.interpolate(size=(gh, gw), mode="bicubic", align_corners=True)`, then flattened row-major and put after the
class row. It differs in three stated ways: the target may be non-square; it runs per forward on the loaded
parameter (computed in float32 and cast back to the parameter's dtype; fp32 weights: the same numbers) instead
of once on a state dict; and it skips the call when (gh, gw) equals the native grid, where torchvision skips
when the token count is unchanged (the same for square grids). The forward is torchvision's own
(`_process_input` without its size assertion, the class token, `encoder.dropout`, `encoder.layers`,
`encoder.ln`), so the hooks of `engine/internals.py` see the same blocks.
"""

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


def resample_pos_embedding(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`encoder.pos_embedding` [1, 1 + g*g, D] -> [1, 1 + gh*gw, D]: `interpolate_embeddings` for (gh, gw)."""
    from .resolution import resample_grid_rows

    native = pos[0, 1:]
    rows = resample_grid_rows(native, grid, align_corners=True)
    return pos if rows is native else torch.cat([pos[:, :1], rows[None]], dim=1)


class TorchvisionBackbone(Backbone):
    def __init__(self, model: VisionTransformer, has_head: bool, full_resolution: bool = False) -> None:
        super().__init__()
        self.model = model
        self.has_head = has_head
        self.num_prefix_tokens = 1
        self.full_resolution = full_resolution

    def at_full_resolution(self) -> TorchvisionBackbone:
        return TorchvisionBackbone(self.model, self.has_head, full_resolution=True)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if not self.full_resolution:
            x = m._process_input(x)
            cls = m.class_token.expand(x.shape[0], -1, -1)
            return m.encoder(torch.cat([cls, x], dim=1))  # encoder ends with its LayerNorm (encoder.ln)
        p = m.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"full resolution: input {tuple(x.shape[-2:])} is not a multiple of the patch {p}")
        x = m.conv_proj(x)  # _process_input, without its image_size assertion
        n, _, gh, gw = x.shape
        x = x.reshape(n, m.hidden_dim, gh * gw).permute(0, 2, 1)
        x = torch.cat([m.class_token.expand(n, -1, -1), x], dim=1)
        enc = m.encoder  # Encoder.forward with the resampled table
        return enc.ln(enc.layers(enc.dropout(x + resample_pos_embedding(enc.pos_embedding, (gh, gw)))))

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
