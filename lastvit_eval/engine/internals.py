"""What no library exposes uniformly: last-block keys / values, CLS attention, per-block norms, token dropping.

One ordinary forward of the backbone, observed through hooks on its transformer blocks (`Backbone.blocks()`):

* the last block's input is captured, and its query / key / value are recomputed from that block's own
  pre-norm and packed projection (`nn.MultiheadAttention.in_proj_*` in torchvision and open_clip, timm's
  `attn.qkv` with its `q_norm` / `k_norm`). This is what LOST reads (a hook on the last `attn.qkv`) and what
  DINO's `get_last_selfattention` returns for the CLS row;
* `block_norms`: the L2 norm of every token after every block (before the final norm), the high-norm
  artifact diagnosis;
* `keep`: per image, the patch indices that enter the first block (prefix tokens always stay). Tokens are
  dropped after the position embedding, so a kept patch keeps its position (MAE / patch-dropout style);
  the dropped patches are absent from every block, not masked.

Recomputing q/k/v costs one projection of one block; the forward itself is the library's, fused paths and
all, so the final tokens are bit-identical to `Backbone.tokens`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..models.base import Backbone

INTERNAL_TAPS = frozenset({"keys", "values", "cls_attn", "block_norms"})
_LAST_BLOCK = frozenset({"keys", "values", "cls_attn"})


def _norm_and_attention(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    for norm, attn in (("ln_1", "self_attention"), ("ln_1", "attn"), ("norm1", "attn")):
        if hasattr(block, norm) and hasattr(block, attn):
            return getattr(block, norm), getattr(block, attn)
    raise InputError(f"{type(block).__name__}: no pre-norm + attention pair (ln_1/norm1 + attn) to read keys from")


def block_qkv(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(q, k, v, scale) of `block`'s self-attention for block input `x` [B, N, D]; q/k/v are [B, H, N, d]."""
    norm, attn = _norm_and_attention(block)
    h = norm(x)
    if isinstance(attn, nn.MultiheadAttention):
        if attn.in_proj_weight is None:
            raise InputError(f"{type(block).__name__}: attention with separate q/k/v projections is not supported")
        heads = attn.num_heads
        packed = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
        q_norm = k_norm = None
    elif hasattr(attn, "qkv") and hasattr(attn, "num_heads"):
        heads = attn.num_heads
        packed = attn.qkv(h)
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    else:
        raise InputError(f"{type(attn).__name__}: unknown attention module (no packed qkv projection)")
    b, n, three_d = packed.shape
    d = three_d // 3 // heads
    q, k, v = packed.reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    scale = float(getattr(attn, "scale", d ** -0.5))
    return q, k, v, scale


def _heads_to_width(t: torch.Tensor) -> torch.Tensor:
    """[B, H, N, d] -> [B, N, H * d], heads concatenated as the packed projection lays them out."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def traced_tokens(bb: Backbone, x: torch.Tensor, want: frozenset[str] = frozenset(),
                  keep: torch.Tensor | None = None,
                  tokens_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Final tokens and the internals in `want`, for one batch.

    Returns `keys`, `values` [B, N, D] and `cls_attn` [B, H, N] (softmax of the first token's query over every
    token) of the last block, and `block_norms` [B, depth, N]; N counts prefix tokens and the kept patches.
    `keep` [B, K] (patch indices, 0-based over the grid) drops every other patch before the first block.
    """
    unknown = set(want) - INTERNAL_TAPS
    if unknown:
        raise ValueError(f"unknown internal taps {sorted(unknown)}")
    if not want and keep is None:
        return (tokens_fn or bb.tokens)(x), {}
    blocks = bb.blocks()
    if not blocks:
        raise InputError(f"{type(bb).__name__}: no transformer blocks to observe ({', '.join(sorted(want)) or 'keep'})")
    prefix = bb.num_prefix_tokens
    if "cls_attn" in want and prefix < 1:
        raise InputError(f"{type(bb).__name__}: no class token, so no CLS attention")
    seen: dict[str, torch.Tensor] = {}
    norms: list[torch.Tensor] = []
    handles = []

    def drop(_module, args, kwargs):
        t = args[0]
        idx = (keep.to(t.device) + prefix)[..., None].expand(-1, -1, t.shape[-1])
        return (torch.cat([t[:, :prefix], torch.gather(t, 1, idx)], dim=1), *args[1:]), kwargs

    def grab_last(_module, args, kwargs):
        seen["last_in"] = args[0] if args else next(iter(kwargs.values()))

    def norm_after(_module, _args, out):
        norms.append((out[0] if isinstance(out, tuple) else out).float().norm(dim=-1))

    try:
        if keep is not None:
            if keep.dim() != 2 or keep.shape[0] != x.shape[0]:
                raise ValueError(f"keep must be [B, K] patch indices, got {tuple(keep.shape)}")
            handles.append(blocks[0].register_forward_pre_hook(drop, with_kwargs=True))
        if want & _LAST_BLOCK:
            handles.append(blocks[-1].register_forward_pre_hook(grab_last, with_kwargs=True))
        if "block_norms" in want:
            handles.extend(b.register_forward_hook(norm_after) for b in blocks)
        tokens = bb.tokens(x)  # hooks and torch.compile do not mix: always the eager forward here
    finally:
        for h in handles:
            h.remove()
    out: dict[str, torch.Tensor] = {}
    if "block_norms" in want:
        out["block_norms"] = torch.stack(norms, dim=1)
    if want & _LAST_BLOCK:
        with torch.autocast(x.device.type, enabled=False):
            q, k, v, scale = block_qkv(blocks[-1], seen["last_in"].float())
            if "keys" in want:
                out["keys"] = _heads_to_width(k)
            if "values" in want:
                out["values"] = _heads_to_width(v)
            if "cls_attn" in want:
                out["cls_attn"] = torch.softmax((q[:, :, :1] @ k.transpose(-2, -1)) * scale, dim=-1)[:, :, 0]
    return tokens, out
