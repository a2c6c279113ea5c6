"""What no library exposes uniformly: last-block keys / values, CLS attention, per-block norms, token dropping.

One ordinary forward of the backbone, observed through hooks on its transformer blocks (`Backbone.blocks()`):

* the last block's attention module is observed (its input and its rotary embedding, as the block passes
  them: after the pre-norm, or the raw tokens in a post-norm block), and query / key / value are recomputed
  from that module's own packed projection (`nn.MultiheadAttention.in_proj_*` in torchvision and open_clip,
  timm's `attn.qkv` with its `q_norm` / `k_norm`; EVA's `EvaAttention` with its q / v biases, split
  projections and rotary embedding on the patch tokens). This is what LOST reads (a hook on the last
  `attn.qkv`) and what DINO's `get_last_selfattention` returns for the CLS row. Any other attention module
  is refused at plan time (`unreadable_attention`), never guessed;
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
LAST_BLOCK_TAPS = frozenset({"keys", "values", "cls_attn"})


def _norm_and_attention(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    for norm, attn in (("ln_1", "self_attention"), ("ln_1", "attn"), ("norm1", "attn")):
        if hasattr(block, norm) and hasattr(block, attn):
            return getattr(block, norm), getattr(block, attn)
    raise InputError(f"{type(block).__name__}: no pre-norm + attention pair (ln_1/norm1 + attn) to read keys from")


def _attention_kind(attn: nn.Module) -> str | None:
    """'mha' | 'timm' | 'eva' for the attention modules whose q / k / v are recomputed exactly; None otherwise.

    Exact types only: a subclass (or another library's module with a `qkv` attribute) may add biases, rotary
    embeddings or a different head layout, and keys recomputed from `qkv` alone would be silently wrong.
    """
    if isinstance(attn, nn.MultiheadAttention):
        return "mha" if attn.in_proj_weight is not None else None
    from timm.layers import Attention
    from timm.models.eva import EvaAttention

    if type(attn) is Attention:
        return "timm"
    if type(attn) is EvaAttention:
        return "eva"
    return None


def unreadable_attention(bb: Backbone) -> str | None:
    """Why the last block's keys / values / CLS attention cannot be read exactly (None when they can)."""
    blocks = bb.blocks()
    if not blocks:
        return "no transformer blocks (a CNN, or a tower whose blocks are not observed)"
    try:
        _, attn = _norm_and_attention(blocks[-1])
    except InputError:
        return f"a {type(blocks[-1]).__name__} block without a known pre-norm + attention pair"
    if _attention_kind(attn) is None:
        return (f"a {type(attn).__module__}.{type(attn).__name__} attention, whose queries and keys are not "
                "recomputed here")
    return None


def feeds_rotary_embedding(bb: nn.Module) -> bool:
    """True when the blocks take a rotary position embedding built for the full patch grid (timm Eva /
    EVA02, EVA-CLIP trunks): dropping patches before the first block would leave it the wrong size."""
    return any(getattr(m, "rope", None) is not None for m in bb.modules())


def attention_qkv(attn: nn.Module, h: torch.Tensor, rope: torch.Tensor | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(q, k, v, scale) of attention module `attn` for its input `h` [B, N, D]; q/k/v are [B, H, N, d]."""
    kind = _attention_kind(attn)
    if kind is None:
        raise InputError(f"{type(attn).__name__}: unknown attention module (keys would not be exact)")
    if kind == "mha" and not attn.batch_first:  # the module's own input is [N, B, D] then
        h = h.transpose(0, 1)
    b, n, _ = h.shape
    heads = attn.num_heads
    if kind == "eva" and attn.qkv is None:  # EVA with split projections (k has no bias)
        q, k, v = (proj(h).reshape(b, n, heads, -1).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj,
                                                                                  attn.v_proj))
    else:
        if kind == "mha":
            packed = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
        elif kind == "eva" and attn.q_bias is not None:  # EVA: q and v biases, k bias zero
            packed = F.linear(h, attn.qkv.weight, torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)))
        else:
            packed = attn.qkv(h)
        q, k, v = packed.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    if kind != "mha":
        q, k = attn.q_norm(q), attn.k_norm(k)
    if kind == "eva" and rope is not None:  # rotary embedding on the patch tokens, prefix tokens left as they are
        from timm.layers import apply_rot_embed_cat

        p, half = attn.num_prefix_tokens, bool(getattr(attn, "rotate_half", False))
        q = torch.cat([q[:, :, :p], apply_rot_embed_cat(q[:, :, p:], rope, half=half)], dim=2).type_as(v)
        k = torch.cat([k[:, :, :p], apply_rot_embed_cat(k[:, :, p:], rope, half=half)], dim=2).type_as(v)
    scale = float(getattr(attn, "scale", q.shape[-1] ** -0.5))
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
        seen["rope"] = kwargs.get("rope")

    def norm_after(_module, _args, out):
        norms.append((out[0] if isinstance(out, tuple) else out).float().norm(dim=-1))

    try:
        if keep is not None:
            if keep.dim() != 2 or keep.shape[0] != x.shape[0]:
                raise ValueError(f"keep must be [B, K] patch indices, got {tuple(keep.shape)}")
            handles.append(blocks[0].register_forward_pre_hook(drop, with_kwargs=True))
        if want & LAST_BLOCK_TAPS:
            why = unreadable_attention(bb)
            if why:
                raise InputError(f"{type(bb).__name__}: {', '.join(sorted(want & LAST_BLOCK_TAPS))} need the last "
                                 f"block's attention, which is {why}")
            last_attn = _norm_and_attention(blocks[-1])[1]
            handles.append(last_attn.register_forward_pre_hook(grab_last, with_kwargs=True))
        if "block_norms" in want:
            handles.extend(b.register_forward_hook(norm_after) for b in blocks)
        tokens = bb.tokens(x)  # hooks and torch.compile do not mix: always the eager forward here
    finally:
        for h in handles:
            h.remove()
    out: dict[str, torch.Tensor] = {}
    if "block_norms" in want:
        out["block_norms"] = torch.stack(norms, dim=1)
    if want & LAST_BLOCK_TAPS:
        with torch.autocast(x.device.type, enabled=False):
            rope = seen["rope"]
            q, k, v, scale = attention_qkv(last_attn, seen["last_in"].float(),
                                           rope.float() if rope is not None else None)
            if "keys" in want:
                out["keys"] = _heads_to_width(k)
            if "values" in want:
                out["values"] = _heads_to_width(v)
            if "cls_attn" in want:
                out["cls_attn"] = torch.softmax((q[:, :, :1] @ k.transpose(-2, -1)) * scale, dim=-1)[:, :, 0]
    return tokens, out
