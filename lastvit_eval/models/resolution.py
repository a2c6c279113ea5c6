"""Evaluating a model at another input size (`--image-size N`): the check, the transform, timm's resampling.

Position embeddings are interpolated by each family's own library (timm `set_input_size` ->
`resample_abs_pos_embed`, torchvision `interpolate_embeddings`, open_clip `resize_pos_embed`), once at load
time. The transform follows the family's ratio: crop N, resize N * resize / crop (256/224 for the families
that crop 224 from 256, N for CLIP's resize == crop).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from ..data.transform import TransformSpec
from ..errors import InputError


def check_image_size(size: int, patch: int, source: str) -> None:
    """A size the patch grid tiles exactly; anything else would silently drop border pixels."""
    if size <= 0 or size % patch:
        raise InputError(f"{source}: --image-size {size} is not a positive multiple of the patch size {patch} "
                         f"(e.g. {max(1, round(size / patch)) * patch})")


def scale_transform(spec: TransformSpec, size: int) -> TransformSpec:
    """Same recipe at crop `size`: the resize keeps the family's resize / crop ratio (floor, as at 224)."""
    if spec.crop == size:
        return spec
    return dataclasses.replace(spec, resize=size * spec.resize // spec.crop, crop=size)


def timm_set_size(model, size: int, source: str) -> list[str]:
    """Resample a timm ViT / Eva to `size` with timm's own `set_input_size`; returns the key-report step."""
    patch = int(model.patch_embed.patch_size[0])
    check_image_size(size, patch, source)
    old = tuple(model.patch_embed.grid_size)
    if old == (size // patch, size // patch):
        return []
    model.set_input_size(img_size=(size, size))
    new = tuple(model.patch_embed.grid_size)
    return [f"position embeddings resampled {old[0]}x{old[1]} -> {new[0]}x{new[1]} for {size}px "
            "(timm set_input_size / resample_abs_pos_embed, bicubic, antialiased)"]


def resample_grid_rows(rows: torch.Tensor, grid: tuple[int, int], **interpolate) -> torch.Tensor:
    """Patch rows of a square position table [g*g, D] -> [gh*gw, D], resampled on the 2-D grid with
    `F.interpolate(size=(gh, gw), mode="bicubic", **interpolate)` in float32 and cast back; row-major, as
    torchvision's `interpolate_embeddings` and open_clip's `resize_pos_embed` lay them out (each family passes
    its own `align_corners` / `antialias`). The rows are returned as they are when (gh, gw) is the native grid."""
    g = math.isqrt(rows.shape[0])
    gh, gw = grid
    if (gh, gw) == (g, g):
        return rows
    img = rows.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
    img = F.interpolate(img, size=(gh, gw), mode="bicubic", **interpolate)
    return img.to(rows.dtype).permute(0, 2, 3, 1).reshape(gh * gw, -1)
