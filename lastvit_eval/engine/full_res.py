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

Position embeddings. Only the DINO / timm family is supported: its timm `VisionTransformer` is switched to
`dynamic_img_size` mode, in which timm resamples `pos_embed` per forward with `resample_abs_pos_embed`
(bicubic, `F.interpolate(size=grid)`, antialias, which acts only when shrinking). DINO's own
`interpolate_pos_encoding` is bicubic too, but passes `scale_factor=((h0 + 0.1) / g, (w0 + 0.1) / g)`, so its
sample positions differ from timm's by under 0.1 / g of a patch: a small, stated difference. torchvision and
open_clip ViTs have no per-forward resampling and are refused (one line), not silently resized.
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

    The timm model is switched in place (the flags `dynamic_img_size` sets at construction); the plan uses
    one model per run, and a run at full resolution has no other evaluator (checked in plan.py).
    """
    if is_full_res(model):
        return model
    vit = getattr(model.backbone, "model", None)
    if model.arch.family != "dino" or vit is None or not hasattr(vit, "dynamic_img_size"):
        raise InputError(f"{model.name}: --resolution full needs a DINO / timm ViT (position embeddings resampled "
                         f"per image); this is a {model.arch.family} model, use --resolution model")
    if getattr(vit, "pos_embed", None) is None:
        raise InputError(f"{model.name}: no absolute position embedding to resample for --resolution full")
    from timm.layers import Format

    pe = vit.patch_embed
    vit.dynamic_img_size = True
    pe.strict_img_size = False
    pe.flatten = False
    pe.output_fmt = Format.NHWC
    return replace(model, transform=full_padded(model.transform, model.arch.patch_size))


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
