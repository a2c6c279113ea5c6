"""Opt-in GPU decode (`--decode gpu`): nvJPEG through torchvision, then resize + crop (or squash) on the device.

Workers only read file bytes; decoding and the antialiased resize run on the GPU. The pixels are close
to, not equal to, the PIL path (different IDCT / chroma upsampling and resize rounding), so a run
measures the gap on a fixed subset first (`parity`) and reports it with the result.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from ..data.transform import TransformSpec, interpolation
from .dataset import BAD_IMAGE_ERRORS, load_rgb


def resize_crop(img: torch.Tensor, t: TransformSpec) -> torch.Tensor:
    """uint8 [3, H, W] on any device -> uint8 [3, crop, crop], same geometry as TransformSpec.pixels."""
    if t.kind == "squash":
        return TF.resize(img, [t.crop, t.crop], interpolation=interpolation(t.interpolation), antialias=True)
    img = TF.resize(img, [t.resize], interpolation=interpolation(t.interpolation), antialias=True)
    return TF.center_crop(img, [t.crop])


def _decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def decode_batch(
    data: list[torch.Tensor], paths: list[Path], t: TransformSpec, device: torch.device
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """File bytes -> (positions that decoded, uint8 [m, 3, crop, crop] on device, [(position, error)]).

    The batch goes to nvJPEG at once; if it refuses (a PNG, a CMYK or progressive JPEG it cannot take),
    each image is retried alone and then through PIL, so only truly unreadable files are reported bad.
    """
    try:
        images: list[torch.Tensor | None] = list(_decode(data, device))
    except RuntimeError:
        images = []
        for d in data:
            try:
                images.append(_decode([d], device)[0])
            except RuntimeError:
                images.append(None)
    ok: list[int] = []
    out: list[torch.Tensor] = []
    bad: list[tuple[int, str]] = []
    for j, img in enumerate(images):
        if img is None:
            try:
                img = TF.pil_to_tensor(load_rgb(paths[j])).to(device)
            except BAD_IMAGE_ERRORS as e:
                bad.append((j, f"{type(e).__name__}: {e}"))
                continue
        ok.append(j)
        out.append(resize_crop(img, t))
    return ok, (torch.stack(out) if out else None), bad


def parity(model, paths: list[Path], request, device: torch.device, dtype: str, n: int = 32) -> dict:
    """GPU vs CPU decode on the first `n` readable images: pixel gap and patch-hit (arg-max) agreement."""
    from .taps import TapRequest, forward_taps

    cpu, gpu_in, kept = [], [], []
    for p in paths[:n]:
        try:
            cpu.append(model.transform.pixels(load_rgb(p)))
            gpu_in.append(torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8))
            kept.append(p)
        except BAD_IMAGE_ERRORS:
            continue
    if not kept:
        return {"images": 0}
    ok, gpu, _ = decode_batch(gpu_in, kept, model.transform, device)
    cpu_t = torch.stack([cpu[j] for j in ok]).to(device)
    diff = (cpu_t.int() - gpu.int()).abs()
    pooling = request.poolings[0]
    req = TapRequest((pooling,), frozenset({"patch_scores"}))
    key = f"patch_scores/{pooling.name}"
    with torch.inference_mode():
        a = forward_taps(model, model.transform.normalize(cpu_t), req, dtype)[key].argmax(1)
        b = forward_taps(model, model.transform.normalize(gpu), req, dtype)[key].argmax(1)
    return {
        "images": len(ok),
        "max_abs_pixel_diff": int(diff.max()),
        "mean_abs_pixel_diff": round(float(diff.float().mean()), 4),
        "pixels_equal_fraction": round(float((diff == 0).float().mean()), 4),
        "patch_hit_argmax_agreement": round(float(np.mean((a == b).cpu().numpy())), 4),
        "pooling": pooling.name,
    }
