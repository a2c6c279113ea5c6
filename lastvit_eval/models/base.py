"""The interface every model family implements, and what loading reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.transform import TransformSpec
from ..errors import InputError
from ..pooling import Pooled


@dataclass(frozen=True)
class ArchSpec:
    """Architecture inferred from tensor shapes."""

    family: str  # torchvision | dino | openclip | dinov2 | timm
    name: str  # e.g. vit_b_16
    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    num_prefix_tokens: int = 1
    num_classes: int | None = None  # None: no classification head
    embed_dim: int | None = None  # output width after a projection (CLIP), None when there is none
    # Heads cannot be read from tensor shapes (qkv is [3D, D] for any head count), so say where they came from:
    # "checkpoint config" | "library config" | "--num-heads" | "assumed from width"
    heads_source: str = "assumed from width"
    config: str | None = None  # the config the file (or hub name) carries, e.g. "args.arch='vit_small' (DINO)"
    num_registers: int = 0  # register tokens among the prefix tokens (DINOv2 reg4: 4; DeiT's dist token is not one)
    # Size the checkpoint's position embeddings were trained for, when it differs from `image_size` (they were
    # interpolated by the family's library: --image-size, or DINOv2's 518 grid evaluated at 224)
    native_image_size: int | None = None

    @property
    def grid(self) -> tuple[int, int]:
        g = self.image_size // self.patch_size
        return (g, g)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class KeyReport:
    """What key mapping did, so a silent `strict=False` load can never happen."""

    format: str  # e.g. "detectron2 {'model': ...}"
    steps: list[str] = field(default_factory=list)  # mapping steps applied, in order
    dropped: list[str] = field(default_factory=list)  # keys deliberately removed (e.g. DINO head)
    ignored: list[str] = field(default_factory=list)  # keys removed by --ignore-keys
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint (a, b) vs architecture (c, d)"

    def to_dict(self) -> dict:
        return asdict(self)


class LoadError(InputError):
    """A load that failed after the checkpoint was read: carries what was learned (key report, architecture)
    so `inspect` can still show the missing / unexpected keys."""

    def __init__(self, message: str, keys: KeyReport | None = None, arch: ArchSpec | None = None) -> None:
        super().__init__(message)
        self.keys = keys
        self.arch = arch


@dataclass
class LoadOptions:
    trust: bool = False
    ignore_keys: tuple[str, ...] = ()  # prefixes of checkpoint keys to drop before a strict load
    num_heads: int | None = None
    checkpoint_key: str | None = None  # e.g. teacher / student for DINO
    family: str | None = None  # force a family instead of detecting it
    quick_gelu: bool | None = None
    arch: str | None = None  # a timm model name (--arch) for state dicts whose architecture shapes cannot tell
    image_size: int | None = None  # evaluate at this input size, position embeddings interpolated (--image-size)


class Backbone(nn.Module):
    """A frozen ViT seen through the three things evaluators need.

    `tokens` returns the final normalized tokens [B, P + N, D] (P prefix tokens: CLS, registers);
    `head` maps a pooled token to logits (None without a classifier); `project` maps a pooled token
    into the output embedding space (CLIP's proj; identity elsewhere).
    """

    num_prefix_tokens: int = 1
    has_map_head: bool = False  # True where `map_pool` is the model's own attention-pool head

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, pooled: torch.Tensor) -> torch.Tensor | None:
        return None

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled

    def blocks(self) -> list[nn.Module]:
        """The transformer blocks in order, each called as `block(x, ...)` on batch-first tokens [B, N, D].

        `engine/internals.py` hooks them for taps no library exposes uniformly (last-block keys and values,
        CLS attention, per-block token norms) and for token dropping; a backbone without transformer blocks
        (a CNN) returns [] and those taps are refused at plan time.
        """
        return []

    def map_pool(self, tokens: torch.Tensor) -> Pooled | None:
        """The model's own attention-pool head on `tokens(x)` (pooling `map`); None without one."""
        return None

    def at_full_resolution(self) -> Backbone | None:
        """A backbone sharing these weights whose `tokens` take any input whose sides are multiples of the patch,
        the position embeddings resampled per forward to that grid with the family's own library interpolation
        (`--resolution full`, engine/full_res.py); None where the family has no such mode here."""
        return None


@dataclass
class LoadedModel:
    backbone: Backbone
    arch: ArchSpec
    transform: TransformSpec
    keys: KeyReport
    source: str  # path or hub name
    sha256: str | None
    params: int = 0
    load_options: LoadOptions | None = None  # set by load_model; part of the feature-cache key

    @property
    def has_map_head(self) -> bool:
        """The backbone's own attention-pool head (`map` pooling); a lazy model answers from its record."""
        return self.backbone.has_map_head

    @property
    def has_class_token(self) -> bool:
        """Prefix tokens are CLS (and a distillation token) plus registers: registers alone are no class token."""
        return self.arch.num_prefix_tokens - (self.arch.num_registers or 0) >= 1  # arch: a lazy model stays unbuilt

    @property
    def name(self) -> str:
        """The file name for checkpoints, the whole name for hub models (`openclip:ViT-B-16/openai`)."""
        if self.source.split(":", 1)[0] in ("torchvision", "timm", "openclip"):
            return self.source
        return Path(self.source).name

    def provenance(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "family": self.arch.family,
            "arch": self.arch.to_dict(),
            "params": self.params,
            "key_mapping": self.keys.steps,
        }
