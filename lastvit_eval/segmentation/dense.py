"""Dense CLIP patch embeddings from an open_clip `VisionTransformer`, and logits -> class labels.

Modes (all end with the tower's `ln_post` then `@ proj`, patch tokens only, as a [B, E, h, w] map):

* `plain`: the final tokens (what the tower computes anyway; its CLS is the image embedding).
* `maskclip`: MaskCLIP's training-free dense feature, as its published code computes it (chongzhou96/MaskCLIP
  @ 245d31f: `configs/_base_/models/maskclip_vit16.py` sets `return_qkv=True, final_norm=True`;
  `mmseg/models/backbones/vit.py`, `TransformerEncoderLayer.forward(x, return_qkv=True)`: the packed
  in-projection's value part through `out_proj`, `v += x`, `v = ffn(norm2(v), identity=v)`; then
  `VisionTransformer.forward` applies the final norm to `v`, and `MaskClipHead.forward` its `proj`):
  `v = x + out_proj(W_v ln_1(x) + b_v)`, `v = v + mlp(ln_2(v))`, then `ln_post` and `proj`. The residual
  and the MLP are kept. (open_clip's layer scales `ls_1`, `ls_2` are applied where the block applies them;
  they are identities in CLIP ViTs. The block's own MLP and norms are used: MaskCLIP's mmseg ViT rebuilds
  them with GELU and LayerNorm eps 1e-6 for OpenAI's QuickGELU / eps 1e-5 weights.)
* `value`: the bare value embedding of the last block, `out_proj(W_v ln_1(x) + b_v)`, without the
  residual and the MLP (what NACLIP's `arch='reduced'` last block drops, sinahmr/NACLIP @ 0cac3a6
  `clip/model.py`, there with its neighbourhood attention instead of each token attending to itself).

The last block's input `x` is taken with a forward pre-hook and the final tokens with a hook on
`ln_post`, so one ordinary forward of the tower serves every mode (open_clip 2.x keeps blocks in
sequence-first layout, 3.x batch-first: the layout is read from the block's attention).

Speed: under autocast nn.MultiheadAttention leaves its fused fast path, transposes batch-first input to
sequence-first (a non-contiguous view) and projects it with `linear`, which torch's matmul then runs
as a batched GEMM over an expanded copy of the weight: 5-10x slower than the fp32 forward on a CPU
(measured: open_clip ViT-B/16 bf16 autocast 10.5 s/window vs 2.2 fp32 on a loaded 2-core VM). A
forward pre-hook hands each attention its input already stored sequence-first (same values, another
memory layout), so the internal transpose is contiguous and the projection is one plain GEMM (1.6
s/window in the same run). Only with autocast on and batch-first blocks (open_clip 3.x).

`labels_from_logits` is SCLIP / NACLIP's post-processing: softmax(logit_scale * cosine) over all
queries, max over each class's synonyms, optional SCLIP area filter, argmax, and pixels whose best
probability is under `prob_threshold` become class 0 (background).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

MODES = ("plain", "maskclip", "value")


def _check_tower(visual: nn.Module) -> None:
    for attr in ("conv1", "ln_post", "transformer"):
        if not hasattr(visual, attr):
            raise InputError(f"dense embeddings need an open_clip VisionTransformer (no {attr!r} on {type(visual).__name__})")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False):
        raise InputError("dense embeddings: towers with an attentional pooler or a post-pool LayerNorm are not supported")
    blk = visual.transformer.resblocks[-1]
    if not isinstance(getattr(blk, "attn", None), nn.MultiheadAttention) or blk.attn.in_proj_weight is None:
        raise InputError(f"dense embeddings: last block {type(blk).__name__} has no packed nn.MultiheadAttention")


def _sequence_first_storage(_module, args, kwargs):
    """Self-attention input [B, N, D] re-stored so that its [N, B, D] transpose is contiguous; query, key
    and value stay one object (MultiheadAttention's packed in-projection checks `query is key`)."""
    q = args[0] if args else kwargs.get("query")
    if q is None or q.ndim != 3 or (len(args) >= 3 and not (args[1] is q and args[2] is q)):
        return None
    if len(args) < 3 and any(kwargs.get(k) is not None and kwargs[k] is not q for k in ("key", "value")):
        return None
    y = q.transpose(0, 1).contiguous().transpose(0, 1)
    rest = {k: v for k, v in kwargs.items() if k not in ("query", "key", "value")}
    return (y, y, y, *args[3:]), rest


def dense_embeddings(visual: nn.Module, images: torch.Tensor, mode: str = "plain") -> torch.Tensor:
    """[B, 3, H, W] normalized images -> [B, E, H / patch, W / patch] embeddings in CLIP's joint space."""
    if mode not in MODES:
        raise InputError(f"unknown dense mode {mode!r}; use one of {', '.join(MODES)}")
    _check_tower(visual)
    blk = visual.transformer.resblocks[-1]
    seen: dict[str, torch.Tensor] = {}

    def grab_input(_module, args, kwargs=None):
        seen["block_in"] = args[0] if args else next(iter(kwargs.values()))

    def grab_final(_module, _args, out):
        seen["final"] = out

    hooks = [blk.register_forward_pre_hook(grab_input, with_kwargs=True)]
    if blk.attn.batch_first and torch.is_autocast_enabled(images.device.type):
        hooks += [b.attn.register_forward_pre_hook(_sequence_first_storage, with_kwargs=True)
                  for b in visual.transformer.resblocks if isinstance(getattr(b, "attn", None), nn.MultiheadAttention)]
    if mode == "plain":
        hooks.append(visual.ln_post.register_forward_hook(grab_final))
    try:
        with torch.no_grad():
            visual(images)
    finally:
        for h in hooks:
            h.remove()

    if mode == "plain":
        tokens = seen["final"]  # ln_post output, [B, N, D] in every open_clip version
    else:
        x = seen["block_in"]
        if not blk.attn.batch_first:  # open_clip 2.x: [N, B, D] inside the transformer
            x = x.transpose(0, 1)
        with torch.no_grad():
            d = x.shape[-1]
            attn = blk.attn
            bias = attn.in_proj_bias[2 * d:] if attn.in_proj_bias is not None else None
            v = attn.out_proj(F.linear(blk.ln_1(x), attn.in_proj_weight[2 * d:], bias))
            if mode == "maskclip":
                v = x + blk.ls_1(v)
                v = v + blk.ls_2(blk.mlp(blk.ln_2(v)))
            tokens = visual.ln_post(v)
    with torch.no_grad():
        patches = tokens[:, 1:]
        if visual.proj is not None:
            patches = patches @ visual.proj
    ph, pw = visual.conv1.kernel_size
    gh, gw = images.shape[-2] // ph, images.shape[-1] // pw
    if patches.shape[1] != gh * gw:
        raise InputError(f"dense embeddings: {patches.shape[1]} patch tokens for a {gh}x{gw} grid")
    return patches.reshape(patches.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous()


def cosine_logits(dense: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """[B, E, h, w] patch embeddings x [Q, E] text embeddings -> [B, Q, h, w] cosine similarities."""
    dense = F.normalize(dense.float(), dim=1)
    text = F.normalize(text.float().to(dense.device), dim=1)
    return torch.einsum("behw,qe->bqhw", dense, text)


def labels_from_logits(
    logits: torch.Tensor,
    query_class: Sequence[int],
    logit_scale: float = 40.0,
    prob_threshold: float = 0.0,
    area_threshold: float | None = None,
) -> torch.Tensor:
    """[Q, H, W] cosine logits over queries -> [H, W] int64 class ids (class 0 = background if thresholded)."""
    if logits.shape[0] != len(query_class):
        raise ValueError(f"{logits.shape[0]} query maps for {len(query_class)} queries")
    if logit_scale <= 0:
        raise ValueError(f"logit_scale must be positive, got {logit_scale}")
    num_classes = max(query_class) + 1
    if len(set(query_class)) != num_classes:
        raise ValueError(f"classes without a query: {sorted(set(range(num_classes)) - set(query_class))}")
    if area_threshold is None:
        # The same labels without the [Q, H, W] softmax and per-class stack (the costliest full-resolution
        # steps): exp is monotonic, so the class of the largest synonym probability is the class of the
        # largest logit, and the largest probability is exp(s * max - logsumexp(s * logits)).
        x = logits.float()
        best, q = x.max(0)  # logit_scale > 0 does not move the argmax
        pred = q if num_classes == len(query_class) else torch.as_tensor(query_class, device=x.device)[q]
        if prob_threshold > 0:  # largest softmax value = 1 / sum(exp(s * (x - max)))
            p_best = (x - best).mul_(logit_scale).exp_().sum(0).reciprocal_()
            pred = pred.masked_fill_(p_best < prob_threshold, 0)
        return pred
    probs = torch.softmax(logits.float() * logit_scale, dim=0)
    if num_classes != len(query_class):  # max over each class's synonyms
        groups: list[list[int]] = [[] for _ in range(num_classes)]
        for q, c in enumerate(query_class):
            groups[c].append(q)
        if any(not g for g in groups):
            raise ValueError(f"classes without a query: {[c for c, g in enumerate(groups) if not g]}")
        probs = torch.stack([probs[g].amax(0) if len(g) > 1 else probs[g[0]] for g in groups])
    if area_threshold is not None:  # SCLIP: drop foreground classes under a share of the foreground area
        area = torch.bincount(probs.argmax(0).reshape(-1), minlength=num_classes)[1:].to(probs.dtype)
        keep = (area > area_threshold * area.sum()).to(probs.dtype)
        probs = torch.cat([probs[:1], probs[1:] * keep.view(-1, 1, 1)])
    best, pred = probs.max(0)
    if prob_threshold > 0:
        pred = torch.where(best < prob_threshold, torch.zeros_like(pred), pred)
    return pred
