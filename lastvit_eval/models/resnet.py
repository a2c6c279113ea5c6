"""Torchvision ResNets (the paper's CNN reference column), supervised or DINO, built with torchvision.

Forms: torchvision state dicts (plain, `{'model': ...}` / `{'state_dict': ...}` wrappers, DDP `module.`),
and DINO `main_dino` checkpoints around a torchvision ResNet (`teacher` keys `backbone.*`, `student` keys
`module.backbone.*`, `fc` replaced by Identity so it is absent; the DINO head `head.*` is dropped) or DINO's
bare released backbone (a torchvision state dict without `fc`).

The ResNet is seen as a ViT without prefix tokens: the last feature map (layer4, [B, C, H/32, W/32]) is the
patch grid, flattened row-major to [B, H*W/1024, C]. GAP over those tokens is torchvision's `avgpool`, so
`head(gap)` is the model's own logits; LAST and the patch score apply to the tokens unchanged.

`--image-size N` (any multiple of 32): torchvision's ResNet takes any input size (`avgpool` is adaptive), so
nothing is resampled; the transform keeps its 256/224 resize / crop ratio at crop N and the grid is N/32.
A DINO `main_dino` checkpoint is recorded as such in the architecture's config (the training recipe is not in
the tensors), so reports label it self-supervised whatever the file is called.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from ..data.transform import dino_vit, torchvision_vit
from ..errors import InputError
from .base import ArchSpec, Backbone, KeyReport, LoadedModel, LoadOptions
from .dino_vit import MAIN_DINO_KEYS, _pick
from .keys import drop_keys, is_state_dict, strict_load, strip_if_all, take_backbone, to_float32

if TYPE_CHECKING:
    from torchvision.models import ResNet

FAMILY = "resnet"
STRIDE = 32  # layer4's total stride: one token per 32x32 pixel cell
DEFAULT_IMAGE_SIZE = 224  # a CNN's weights do not fix its input size; the paper evaluates at 224
REQUIRED = ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer4.0.conv1.weight")
# torchvision names for (block, layers, width_per_group)
NAMES = {("Bottleneck", (3, 4, 6, 3), 64): "resnet50", ("Bottleneck", (3, 4, 23, 3), 64): "resnet101",
         ("Bottleneck", (3, 8, 36, 3), 64): "resnet152", ("BasicBlock", (2, 2, 2, 2), 64): "resnet18",
         ("BasicBlock", (3, 4, 6, 3), 64): "resnet34", ("Bottleneck", (3, 4, 6, 3), 128): "wide_resnet50_2"}


def unwrap(raw, opts: LoadOptions | None = None) -> tuple[dict, KeyReport, bool] | None:
    """A torchvision ResNet state dict, the key report, and whether it came from a DINO checkpoint."""
    opts = opts or LoadOptions()
    report = KeyReport(format="state_dict (torchvision ResNet)")
    if not isinstance(raw, dict):
        return None
    obj = _pick(raw, opts, report)  # DINO's unwrapping: teacher / student / --checkpoint-key / model / state_dict
    if not is_state_dict(obj):
        return None
    dino = any(k in raw for k in MAIN_DINO_KEYS)
    sd = dict(obj)
    for prefix in ("module.", "model."):
        sd = strip_if_all(sd, prefix, report.steps)
    sd, took = take_backbone(sd, report)
    dino = dino or took
    if not all(k in sd for k in REQUIRED):
        return None
    return sd, report, dino


def detect(raw) -> bool:
    return unwrap(raw) is not None


def _blocks(sd: dict, layer: int) -> int:
    return len({m.group(1) for k in sd if (m := re.match(rf"layer{layer}\.(\d+)\.", k))})


def infer_arch(sd: dict, source: str, image_size: int = DEFAULT_IMAGE_SIZE) -> tuple[ArchSpec, dict]:
    """ArchSpec plus torchvision ResNet kwargs (block, layers, groups, width_per_group), from tensor shapes."""
    layers = tuple(_blocks(sd, i) for i in (1, 2, 3, 4))
    bottleneck = "layer1.0.conv3.weight" in sd
    stem = sd["conv1.weight"].shape[0]
    if stem != 64:
        raise InputError(f"{source}: conv1.weight {tuple(sd['conv1.weight'].shape)} has {stem} channels; torchvision "
                         "ResNets have 64")
    conv2 = sd["layer1.0.conv2.weight"]
    if bottleneck:
        width = conv2.shape[0]  # layer1 bottleneck width = width_per_group * groups
        groups = width // conv2.shape[1]
        width_per_group = width // groups
        channels = sd[f"layer4.{layers[3] - 1}.conv3.weight"].shape[0]
    else:
        groups, width_per_group = 1, 64
        channels = sd[f"layer4.{layers[3] - 1}.conv2.weight"].shape[0]
    num_classes = int(sd["fc.weight"].shape[0]) if "fc.weight" in sd else None
    block = "Bottleneck" if bottleneck else "BasicBlock"
    name = NAMES.get((block, layers, width_per_group), f"resnet-{block.lower()}-{'-'.join(map(str, layers))}")
    if groups > 1:
        name = f"resnext-{groups}x{width_per_group}d-{'-'.join(map(str, layers))}"
    arch = ArchSpec(family=FAMILY, name=name, image_size=image_size, patch_size=STRIDE, width=int(channels),
                    depth=sum(layers), heads=0, mlp_dim=0, num_prefix_tokens=0, num_classes=num_classes,
                    heads_source="none (CNN)", config=f"torchvision ResNet({block}, {list(layers)}, groups={groups}, "
                                                      f"width_per_group={width_per_group})")
    kwargs = dict(block=block, layers=list(layers), groups=groups, width_per_group=width_per_group,
                  num_classes=num_classes or 1000)
    return arch, kwargs


def build(kwargs: dict, has_fc: bool) -> ResNet:
    from torchvision.models import resnet as tvr

    model = tvr.ResNet(getattr(tvr, kwargs["block"]), kwargs["layers"], num_classes=kwargs["num_classes"],
                       groups=kwargs["groups"], width_per_group=kwargs["width_per_group"])
    if not has_fc:
        model.fc = torch.nn.Identity()  # as DINO trains it: no classifier weights to load
    return model


class ResNetBackbone(Backbone):
    """layer4's feature map as tokens [B, H*W, C] (no prefix tokens); `head` is `fc` where the file has one."""

    def __init__(self, model: ResNet, has_head: bool) -> None:
        super().__init__()
        self.model = model
        self.has_head = has_head
        self.num_prefix_tokens = 0

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return x.flatten(2).transpose(1, 2)

    def head(self, pooled: torch.Tensor) -> torch.Tensor | None:
        return self.model.fc(pooled) if self.has_head else None


def load(raw, opts: LoadOptions, source: str, sha256: str | None, hint: str | None = None) -> LoadedModel:
    """`hint`: a torchvision model name known from outside the file (hub names); checked against the shapes."""
    found = unwrap(raw, opts)
    if found is None:
        raise InputError(f"{source}: not a torchvision ResNet checkpoint (no {', '.join(REQUIRED)} after unwrapping)")
    sd, report, dino = found
    if opts.num_heads is not None:
        raise InputError(f"{source}: --num-heads does not apply to a ResNet; drop it")
    sd, ignored = drop_keys(sd, opts.ignore_keys)
    report.ignored = ignored
    sd = to_float32(sd)
    size = opts.image_size or DEFAULT_IMAGE_SIZE
    if opts.image_size:
        from .resolution import check_image_size

        check_image_size(size, STRIDE, source)
    arch, kwargs = infer_arch(sd, source, image_size=size)
    if dino:
        import dataclasses

        arch = dataclasses.replace(arch, config=f"{arch.config}; training: DINO self-supervised (main_dino)")
    if hint is not None and hint != arch.name:
        raise InputError(f"{source}: torchvision {hint} expected, but the tensors are a {arch.name} ({arch.config})")
    model = build(kwargs, has_fc=arch.num_classes is not None)
    strict_load(model, sd, source, report, arch)
    model.eval().requires_grad_(False)
    return LoadedModel(
        backbone=ResNetBackbone(model, has_head=arch.num_classes is not None),
        arch=arch,
        transform=dino_vit(arch.image_size) if dino else torchvision_vit(arch.image_size),
        keys=report,
        source=source,
        sha256=sha256,
        params=sum(p.numel() for p in model.parameters()),
    )
