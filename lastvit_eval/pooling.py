"""Pooling of the final normalized tokens into one token per image: CLS, GAP, LAST or MAP.

MAP is the model's own attention-pool head (SigLIP's MAP head, a CLIP ResNet's `attnpool`): the backbone
supplies it (`Backbone.map_pool`); this module only names the kind, so every pooling kind is spelled here.

LAST (frequency-domain token selection) follows the label-supervised training code that produced the
released weights: low-pass each patch token along the channel axis, score every (patch, channel) by
how stable it is under the low-pass, keep the top-k patches per channel and average them.

The Gaussian mask is the reference's: t = arange(-D//2 + 1, D//2 + 1) against the fftshift-ed spectrum.
For odd D it is centred on the DC bin; for even D it is centred one bin off (DC sits at t = 1, so
g(DC) = exp(-1 / (2 sigma^2)) = 0.99935 for D = 768, sigma = sqrt(D), and the mask is not symmetric,
whence the `.real` after the inverse FFT). We keep it: the released weights were trained with it.
Scores are computed in float32 whatever the token dtype (fp16/bf16 tokens are upcast first), and ties
between patches go to the lower patch index, so the choice does not depend on the topk kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .errors import InputError

PoolKind = Literal["cls", "gap", "last", "map"]
POOL_KINDS = ("cls", "gap", "last", "map")
ScoreFormula = Literal["code", "paper"]


@dataclass(frozen=True)
class PoolingSpec:
    """What to pool and how; recorded with every result."""

    kind: PoolKind = "cls"
    topk: int = 1
    sigma: float | None = None  # None: sqrt(D), as in the paper
    formula: ScoreFormula = "code"
    eps: float = 1e-6  # only used by the paper formula

    def __post_init__(self) -> None:
        if self.kind not in POOL_KINDS:
            raise InputError(f"pooling: unknown kind {self.kind!r} (use cls, gap, last or map)")
        if self.topk < 1:
            raise InputError(f"pooling: --topk must be >= 1, got {self.topk}")
        if self.sigma is not None and not self.sigma > 0:
            raise InputError(f"pooling: --sigma must be > 0, got {self.sigma}")
        if self.formula not in ("code", "paper"):
            raise InputError(f"pooling: unknown score formula {self.formula!r} (use code or paper)")

    @property
    def name(self) -> str:
        """Short stable name used in tap keys, table rows and cache keys."""
        if self.kind != "last":
            return self.kind
        name = f"last-k{self.topk}"
        if self.sigma is not None:
            name += f"-s{self.sigma:g}"
        if self.formula != "code":
            name += f"-{self.formula}"
        return name

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def parse(cls, text: str) -> PoolingSpec:
        """Parse `cls`, `gap`, `map`, `last`, `last:k=5`, `last:k=1,sigma=20,formula=paper`."""
        kind, _, rest = text.strip().partition(":")
        kwargs: dict = {}
        for part in filter(None, rest.split(",")):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep:
                raise InputError(f"pooling: cannot parse {text!r} (expected key=value after ':')")
            try:
                if key in ("k", "topk"):
                    kwargs["topk"] = int(value)
                elif key == "sigma":
                    kwargs["sigma"] = float(value)
            except ValueError:
                raise InputError(f"pooling {text!r}: {key}={value!r} is not a number") from None
            if key in ("k", "topk", "sigma"):
                continue
            if key == "formula":
                kwargs["formula"] = value.strip()
            else:
                raise InputError(f"pooling: unknown option {key!r} in {text!r}")
        if kwargs and kind != "last":
            raise InputError(f"pooling: options only apply to last, got {text!r}")
        return cls(kind=kind, **kwargs)  # type: ignore[arg-type]


@dataclass
class Pooled:
    """One pooling's outputs for a batch."""

    token: torch.Tensor  # [B, D] pooled token, in the space of the final normalized tokens
    votes: torch.Tensor | None = None  # [B, N] channels that selected each patch (LAST only)
    # MAP only: the patch tokens in the pooled token's space (for patch scores) when the head changes space
    # (a CLIP ResNet's attnpool ends in c_proj), and whether the token is already in the embedding space.
    patches: torch.Tensor | None = None
    projected: bool = False


def gaussian_lowpass_kernel(dim: int, sigma: float | None, device=None) -> torch.Tensor:
    """The reference frequency mask: t = arange(-D//2 + 1, D//2 + 1), exp(-t^2 / 2 sigma^2) / max."""
    sigma = math.sqrt(dim) if sigma is None else sigma
    t = torch.arange(-dim // 2 + 1, dim // 2 + 1, device=device, dtype=torch.float32)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return g / g.max()


def lowpass(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Low-pass x along the channel axis (last dim) in the centred frequency domain."""
    g = gaussian_lowpass_kernel(x.shape[-1], sigma, device=x.device)
    spec = torch.fft.fftshift(torch.fft.fft(x, dim=-1), dim=-1) * g
    return torch.fft.ifft(torch.fft.ifftshift(spec, dim=-1), dim=-1).real


def last_scores(x: torch.Tensor, spec: PoolingSpec) -> torch.Tensor:
    """Per (patch, channel) stability scores; NaN-free so topk is well defined.

    code  (trained the released weights): x / |xf - x|
    paper (Eq. 5):                         xf / (|xf - x| + eps)
    A 0/0 (an all-zero channel) scores -inf so a degenerate patch is never preferred; x/0 keeps its
    signed infinity, which is the formula's own limit.
    """
    xf = lowpass(x, spec.sigma)
    diff = (xf - x).abs()
    if spec.formula == "code":
        s = x / diff
    else:
        s = xf / (diff + spec.eps)
    return torch.nan_to_num(s, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))


def last_pool(patches: torch.Tensor, spec: PoolingSpec) -> Pooled:
    """LAST pooling of patch tokens [B, N, D] -> Pooled([B, D], votes [B, N])."""
    b, n, d = patches.shape
    k = min(spec.topk, n)
    x = patches.float()
    s = last_scores(x, spec)
    # Per channel, the chosen patches [B, k, D]; ties to the lower patch index (torch.topk leaves tie
    # order unspecified; argmax returns the first maximum; a stable sort keeps index order).
    if k == 1:
        idx = s.argmax(dim=1, keepdim=True)
    else:
        idx = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
    token = x.gather(1, idx).mean(dim=1)
    votes = torch.zeros(b, n, device=x.device, dtype=torch.float32)
    votes.scatter_add_(1, idx.reshape(b, k * d), torch.ones(b, k * d, device=x.device))
    return Pooled(token=token, votes=votes)


def pool(tokens: torch.Tensor, num_prefix: int, spec: PoolingSpec,
         map_head: Callable[[torch.Tensor], Pooled | None] | None = None) -> Pooled:
    """Pool final normalized tokens [B, num_prefix + N, D] (prefix = CLS and registers).

    `map_head`: the backbone's attention-pool head (`Backbone.map_pool`), needed for `map` only.
    """
    if spec.kind == "map":
        out = map_head(tokens) if map_head is not None else None
        if out is None:
            raise InputError("pooling: map requested but the model has no attention-pool head")
        return out
    if spec.kind == "cls":
        if num_prefix < 1:
            raise InputError("pooling: cls requested but the model has no class token")
        return Pooled(token=tokens[:, 0].float())
    patches = tokens[:, num_prefix:]
    if spec.kind == "gap":
        return Pooled(token=patches.float().mean(dim=1))
    return last_pool(patches, spec)


def patch_scores(patches: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every patch token [B, N, D] with the pooled token [B, D] -> [B, N]."""
    return F.cosine_similarity(patches.float(), pooled.float().unsqueeze(1), dim=-1)
