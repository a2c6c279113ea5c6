"""Preprocessing as a recorded spec: resize (short side) + center crop, then normalization on device.

Kind `squash` (open_clip's resize_mode='squash', SigLIP's own preprocessing): the whole image resized to
crop x crop, aspect ratio not kept, no crop; open_clip does it with torchvision's Resize((n, n)) on the PIL
image (PIL's resampling, always antialiased), which is the call made here.

The pixel pipeline is torchvision's own (v2 Resize and CenterCrop on PIL images, as the reference
weights were evaluated); `geometry.py` reproduces its size and offset arithmetic for annotations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
KINDS = ("resize-crop", "squash", "full-padded")

def interpolation(name: str):
    """torchvision's InterpolationMode for a spec's name (torchvision imported only when pixels are made:
    commands on stored features never pay for it)."""
    from torchvision.transforms import InterpolationMode

    return {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
            "nearest": InterpolationMode.NEAREST}[name]


@dataclass(frozen=True)
class TransformSpec:
    resize: int = 256  # short side after resize
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    backend: str = "pil"
    # "resize-crop" (the above), or "full-padded": the whole image at its own size, zero-padded after
    # normalisation at the bottom/right to a multiple of `pad_multiple` (LOST's object-discovery protocol),
    # or "squash": resized to crop x crop (aspect ratio not kept, no crop; `resize` == `crop`)
    kind: str = "resize-crop"
    pad_multiple: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown transform kind {self.kind!r} (known: {', '.join(KINDS)})")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.kind == "resize-crop":  # recorded only when set: feature-store keys of resize-crop runs unchanged
            d.pop("kind"), d.pop("pad_multiple")
        return d

    def pixels(self, img: Image.Image) -> torch.Tensor:
        """PIL RGB image -> uint8 tensor [3, crop, crop]; float conversion happens on the device."""
        from torchvision.transforms.v2 import functional as TF

        if self.kind == "full-padded":
            return TF.pil_to_tensor(img)
        if self.kind == "squash":
            img = TF.resize(img, [self.crop, self.crop], interpolation=interpolation(self.interpolation), antialias=True)
            return TF.pil_to_tensor(img)
        img = TF.resize(img, [self.resize], interpolation=interpolation(self.interpolation), antialias=True)
        img = TF.center_crop(img, [self.crop])
        return TF.pil_to_tensor(img)

    def normalize(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] on any device -> normalized float32, same arithmetic as ToTensor+Normalize."""
        x = batch_uint8.float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = x.sub_(mean).div_(std)
        if self.kind == "full-padded":
            m = self.pad_multiple
            x = torch.nn.functional.pad(x, (0, -x.shape[-1] % m, 0, -x.shape[-2] % m))  # zeros = the mean colour
        return x


def full_padded(spec: TransformSpec, patch: int) -> TransformSpec:
    """`spec`'s normalisation on the whole image, padded to a multiple of the patch (no resize, no crop)."""
    from dataclasses import replace

    return replace(spec, resize=0, crop=0, interpolation="none", kind="full-padded", pad_multiple=patch)


def torchvision_vit(image_size: int = 224) -> TransformSpec:
    """torchvision ViT recipe: resize 256 bilinear, crop 224 (scaled for other image sizes)."""
    return TransformSpec(resize=image_size * 256 // 224, crop=image_size, interpolation="bilinear")


def dino_vit(image_size: int = 224) -> TransformSpec:
    return TransformSpec(resize=image_size * 256 // 224, crop=image_size, interpolation="bicubic")


def clip_vit(image_size: int = 224) -> TransformSpec:
    return TransformSpec(resize=image_size, crop=image_size, interpolation="bicubic", mean=CLIP_MEAN, std=CLIP_STD)


def squash(spec: TransformSpec) -> TransformSpec:
    """`spec` with the whole image resized to crop x crop (open_clip resize_mode='squash'), no crop."""
    from dataclasses import replace

    return replace(spec, resize=spec.crop, kind="squash", pad_multiple=0)


def open_clip_resize_mode(spec: TransformSpec, mode: str | None, source: str) -> TransformSpec:
    """`spec` following open_clip's `resize_mode` (its `image_transform`): 'shortest' (or none) = resize the
    short side + center crop (as is), 'squash' = `squash(spec)`; 'longest' (resize the long side, then pad) is
    not reproduced and refused, so a model is never scored on a preprocessing other than its own."""
    if mode in (None, "shortest"):
        return spec
    if mode == "squash":
        return squash(spec)
    from ..errors import InputError

    what = " (resize the long side + pad)" if mode == "longest" else ""
    raise InputError(f"{source}: open_clip preprocesses this model with resize_mode={mode!r}{what}, which "
                     "lastvit-eval does not reproduce (it does 'shortest' and 'squash')")
