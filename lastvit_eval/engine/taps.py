"""What one forward pass emits: final normalized tokens -> every requested pooling and tap, in fp32.

Taps (keys `<tap>/<pooling name>`, or the bare tap for pooling-free ones):
`pooled` (the pooled token), `embedding` (pooled token through the projection, CLIP), `logits` (the
checkpoint's head), `patch_scores` (cosine of every patch token with the pooled token), `votes` (LAST:
channels that chose each patch) and, pooling-free, `patch_tokens` (fp16), the last block's `keys` (patch
tokens, heads concatenated, fp16), `cls_attn` (the CLS query's attention over the patches, per head) and
`block_norms` (every token's norm after every block; see `internals.py`). `masked_logits@top0.25` (the
masking probe, `masking.py`): the head's logits after a second forward from which the given fraction of
highest- (`top`) or lowest- (`bottom`) scoring patches was dropped, ranked by that pooling's patch scores.
The forward emits only what is asked; `CHEAP_TAPS` are those that cost nothing next to the backbone, which
the feature store keeps whenever an image is forwarded anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..masking import drop_count, parse_masked
from ..models.base import LoadedModel
from ..pooling import PoolingSpec, patch_scores, pool
from .device import autocast
from .internals import INTERNAL_TAPS, traced_tokens

TAP_KINDS = ("pooled", "embedding", "patch_scores", "votes", "logits", "patch_tokens", "keys", "cls_attn",
             "block_norms")
POOLING_FREE = frozenset({"patch_tokens", "keys", "cls_attn", "block_norms"})
CHEAP_TAPS = frozenset({"pooled", "embedding", "patch_scores", "votes", "logits"})


def keep_indices(scores: torch.Tensor, side: str, drop: int) -> torch.Tensor:
    """[B, P - drop] patch indices (ascending) left after dropping the `drop` highest- (`top`) or lowest-
    (`bottom`) scoring patches of each row of `scores` [B, P]; ties go by patch index (stable sort)."""
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    kept = order[:, drop:] if side == "top" else order[:, : scores.shape[1] - drop]
    return kept.sort(dim=1).values


def dropped_logits(bb, x: torch.Tensor, spec: PoolingSpec, keep: torch.Tensor, dtype: str) -> torch.Tensor | None:
    """The head's logits when only the patches `keep` [B, K] (and every prefix token) enter the blocks,
    pooled with `spec` over the kept patches; None for a backbone without a head."""
    with autocast(x.device, dtype):
        tokens, _ = traced_tokens(bb, x, keep=keep)
    p = pool(tokens.float(), bb.num_prefix_tokens, spec)
    logits = bb.head(p.token)
    return None if logits is None else logits.float()


@dataclass(frozen=True)
class TapRequest:
    """Which arrays to keep from the forward pass."""

    poolings: tuple[PoolingSpec, ...]
    taps: frozenset[str]
    probe_poolings: frozenset[str] | None = None  # poolings the masking probe runs for (None: every one)

    def probes_for(self, spec: PoolingSpec) -> bool:
        return self.probe_poolings is None or spec.name in self.probe_poolings

    def __post_init__(self) -> None:
        unknown = {t for t in self.taps if t not in TAP_KINDS and parse_masked(t) is None}
        if unknown:
            raise ValueError(f"unknown taps {sorted(unknown)}")

    def keys(self, model: LoadedModel) -> list[str]:
        """The array keys this request yields for `model` (votes only for LAST, logits only with a head)."""
        out = [t for t in sorted(self.taps & POOLING_FREE)]
        for spec in self.poolings:
            for tap in sorted(self.taps - POOLING_FREE):
                if tap == "votes" and spec.kind != "last":
                    continue
                if (tap == "logits" or parse_masked(tap)) and model.arch.num_classes is None:
                    continue
                if parse_masked(tap) and not self.probes_for(spec):
                    continue
                if tap == "embedding" and model.arch.embed_dim is None:
                    continue
                out.append(f"{tap}/{spec.name}")
        return out


def forward_taps(model: LoadedModel, x: torch.Tensor, request: TapRequest, dtype: str,
                 tokens_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Taps for one normalized batch. Pooling, scores and heads run in fp32 whatever the autocast dtype.

    `tokens_fn` replaces `backbone.tokens` (e.g. its torch.compile'd version).
    """
    bb = model.backbone
    want = request.taps & INTERNAL_TAPS
    with autocast(x.device, dtype):
        tokens, internals = traced_tokens(bb, x, want, tokens_fn=tokens_fn)
    tokens = tokens.float()
    prefix = bb.num_prefix_tokens
    patches = tokens[:, prefix:]
    out: dict[str, torch.Tensor] = {}
    if "patch_tokens" in request.taps:
        out["patch_tokens"] = patches.half()
    if "keys" in internals:
        out["keys"] = internals["keys"][:, prefix:].half()
    if "cls_attn" in internals:
        out["cls_attn"] = internals["cls_attn"][:, :, prefix:].float()
    if "block_norms" in internals:
        out["block_norms"] = internals["block_norms"].float()
    masked = sorted((t, parse_masked(t)) for t in request.taps if parse_masked(t) is not None)
    for spec in request.poolings:
        p = pool(tokens, prefix, spec, bb.map_pool)
        name = spec.name
        for tap, (side, fraction) in masked if request.probes_for(spec) else ():
            n = patches.shape[1]
            keep = keep_indices(patch_scores(patches, p.token), side, drop_count(fraction, n))
            logits = dropped_logits(bb, x, spec, keep, dtype)
            if logits is not None:
                out[f"{tap}/{name}"] = logits
        if "pooled" in request.taps:
            out[f"pooled/{name}"] = p.token
        if "embedding" in request.taps and model.arch.embed_dim is not None:
            out[f"embedding/{name}"] = (p.token if p.projected else bb.project(p.token)).float()
        if "patch_scores" in request.taps:
            out[f"patch_scores/{name}"] = patch_scores(patches if p.patches is None else p.patches, p.token)
        if "votes" in request.taps and p.votes is not None:
            out[f"votes/{name}"] = p.votes
        if "logits" in request.taps:
            logits = bb.head(p.token)
            if logits is not None:
                out[f"logits/{name}"] = logits.float()
    return out


def first_non_finite(out: dict[str, torch.Tensor]) -> tuple[str, int] | None:
    """(tap key, batch row) of the first non-finite value, or None. A NaN must never become a metric."""
    for key in sorted(out):
        v = out[key]
        if not v.is_floating_point():
            continue
        bad = ~torch.isfinite(v.reshape(len(v), -1)).all(dim=1)
        if bool(bad.any()):
            return key, int(bad.nonzero()[0, 0])
    return None


def check_finite(out: dict[str, torch.Tensor], names: list[str]) -> None:
    """Raise InputError naming the first image whose tokens, scores or logits are not finite."""
    hit = first_non_finite(out)
    if hit is not None:
        key, row = hit
        raise InputError(f"{names[row]}: the forward pass gave non-finite values ({key}); the checkpoint or "
                         "the --dtype overflows on this image, so no metric is computed")
