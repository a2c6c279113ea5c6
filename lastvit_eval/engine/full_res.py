"""Full-resolution inputs (LOST's object-discovery protocol): each image at its own size, padded to the patch.

LOST (valeoai/LOST `main_lost.py`) feeds every image alone (batch 1), ToTensor + ImageNet normalisation, no
resize, zero-padded after normalisation at the bottom/right up to the next multiple of the patch size, and
lets DINO's `interpolate_pos_encoding` stretch the position embeddings to the ceil(h/p) x ceil(w/p) grid.

Here: the model's transform becomes kind `full-padded` (`data/transform.full_padded`, recorded with every
result); the runner forwards such images one at a time; the taps of one image keep their own grid, so a
split's arrays are ragged (`stack_rows`: an object array of per-image arrays when shapes differ) and the
feature store, which keeps fixed-shape arrays per tap, is not used for them (`uses_store`). Nor are they held
for the whole split: extraction reduces them chunk by chunk (`extract(reduce=...)`, `REDUCE_CHUNK` images,
e.g. CorLoc's keys -> one box per image) and keeps only the small per-image results.

Position embeddings: each family follows its own library's resampling, per forward, to the padded grid
(gh, gw) = (ceil(h/p), ceil(w/p)); the switch is explicit (`full_resolution`), never a silent resize.

* DINO, DINOv2 and timm files whose model is a plain timm `VisionTransformer`: the model is switched to
  `dynamic_img_size` mode, in which timm resamples `pos_embed` per forward with `resample_abs_pos_embed` (bicubic, `F.interpolate(size=grid)`,
  antialias, which acts only when shrinking). DINO's own `interpolate_pos_encoding` is bicubic too, but passes
  `scale_factor=((h0 + 0.1) / g, (w0 + 0.1) / g)`, so its sample positions differ from timm's by under 0.1 / g
  of a patch: a small, stated difference.
* torchvision ViTs: a full-resolution copy of the backbone (`TorchvisionBackbone.at_full_resolution`, same
  weights) whose forward adds `interpolate_embeddings`' resampling generalised to (gh, gw): class row kept,
  bicubic, `align_corners=True` (models/torchvision_vit.py says exactly where it differs).
* OpenCLIP ViTs: likewise (`OpenCLIPBackbone.at_full_resolution`), with `resize_pos_embed`'s resampling
  generalised to (gh, gw): class row kept, bicubic, `antialias=True`, `align_corners=False`
  (models/openclip_vit.py).

Other models (EVA and other VisionTransformer subclasses, CNNs, other CLIP towers) are refused in one line, before
any forward; so is a model loaded with `--image-size` (its table was already resampled once).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..data.transform import full_padded
from ..errors import InputError
from ..models.base import LoadedModel

FULL_PADDED = "full-padded"


def is_full_res(model: LoadedModel) -> bool:
    return getattr(model.transform, "kind", "resize-crop") == FULL_PADDED


def full_resolution(model: LoadedModel) -> LoadedModel:
    """`model` with a full-padded transform and a backbone that takes any multiple of the patch size.

    DINO / DINOv2 / timm (a plain timm VisionTransformer): the timm model is switched in place (the flags
    `dynamic_img_size` sets at construction); the plan uses one model per run, and a run at full resolution has no other evaluator (checked in plan.py).
    torchvision / OpenCLIP: a full-resolution backbone sharing the loaded weights replaces the backbone.
    """
    if is_full_res(model):
        return model
    if model.arch.native_image_size is not None:  # the table was already resampled once for --image-size
        raise InputError(f"{model.name}: --resolution full resamples the position embeddings per image from the "
                         f"trained {model.arch.native_image_size} px table; drop --image-size "
                         f"{model.arch.image_size} (it would resample a resampled table), or keep it with "
                         "--resolution model")
    transform = full_padded(model.transform, model.arch.patch_size)
    backbone = model.backbone.at_full_resolution()  # torchvision and open_clip ViTs; None for every other backbone
    if backbone is not None:
        return replace(model, backbone=backbone, transform=transform)
    vit = getattr(model.backbone, "model", None)
    from timm.models.vision_transformer import VisionTransformer

    # DINO, DINOv2 and timm files are timm VisionTransformers (registers and DeiT's distillation token are
    # prefix tokens its _pos_embed handles); subclasses such as EVA (rotary tables) are not switched
    if model.arch.family not in ("dino", "dinov2", "timm") or type(vit) is not VisionTransformer:
        raise InputError(f"{model.name}: --resolution full needs a DINO, torchvision or OpenCLIP ViT "
                         f"(position embeddings resampled per image); its family is {model.arch.family} (a CLIP "
                         "tower other than an open_clip ViT is not one), use --resolution model")
    if getattr(vit, "pos_embed", None) is None:
        raise InputError(f"{model.name}: no absolute position embedding to resample for --resolution full")
    from timm.layers import Format

    pe = vit.patch_embed
    vit.dynamic_img_size = True
    pe.strict_img_size = False
    pe.flatten = False
    pe.output_fmt = Format.NHWC
    return replace(model, transform=transform)


def uses_store(model: LoadedModel) -> bool:
    """The feature store keeps fixed-shape arrays per tap; full-resolution taps are ragged."""
    return not is_full_res(model)


def stack_rows(rows: list) -> np.ndarray:
    """Per-image arrays -> one array [n, ...] when shapes agree, else an object array of the arrays."""
    rows = [r.numpy() if isinstance(r, torch.Tensor) else np.asarray(r) for r in rows]
    if rows and all(r.shape == rows[0].shape for r in rows):
        return np.stack(rows)
    out = np.empty(len(rows), dtype=object)
    for i, r in enumerate(rows):
        out[i] = r
    return out
