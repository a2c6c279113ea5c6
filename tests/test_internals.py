"""Last-block keys / values, CLS attention, block norms and token dropping, against each library's own modules.

References: timm's attention matrix with its fused path off (captured at `attn_drop`, where timm's own
Attention materializes it) and LOST's literal key hook on the last `attn.qkv`; torchvision's and
open_clip's `nn.MultiheadAttention(need_weights=True, average_attn_weights=False)`; block norms from the
blocks run one by one in the test. Tolerance 1e-5 (fp32, same operations in a different order).
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_vit
from tiny_models import tiny_clip, tiny_timm

from lastvit_eval.engine.internals import traced_tokens
from lastvit_eval.engine.taps import TapRequest, forward_taps
from lastvit_eval.models.dino_vit import TimmBackbone
from lastvit_eval.models.openclip_vit import OpenCLIPBackbone
from lastvit_eval.models.torchvision_vit import TorchvisionBackbone
from lastvit_eval.pooling import PoolingSpec

ALL = frozenset({"keys", "values", "cls_attn", "block_norms"})
TOL = 1e-5


def _timm_reference(m, x):
    """Block inputs, LOST's qkv-hook keys and timm's own attention matrix of the last block."""
    blk = m.blocks[-1]
    blk.attn.fused_attn = False
    seen = {}
    h1 = blk.attn.qkv.register_forward_hook(lambda _m, _a, out: seen.__setitem__("qkv", out))
    h2 = blk.attn.attn_drop.register_forward_hook(lambda _m, _a, out: seen.__setitem__("attn", out))
    try:
        t = m.norm_pre(m._pos_embed(m.patch_embed(x)))
        norms = []
        for b in m.blocks:
            t = b(t)
            norms.append(t.norm(dim=-1))
        final = m.norm(t)
    finally:
        h1.remove()
        h2.remove()
        blk.attn.fused_attn = True
    b_, n, _ = seen["qkv"].shape
    heads = blk.attn.num_heads
    qkv = seen["qkv"].reshape(b_, n, 3, heads, -1).permute(2, 0, 3, 1, 4)  # LOST main_lost.py reads it this way
    keys = qkv[1].transpose(1, 2).reshape(b_, n, -1)
    return final, keys, seen["attn"][:, :, 0], torch.stack(norms, 1)


def test_timm_internals_match_timm_attention_and_lost_keys():
    m = tiny_timm(seed=3)
    bb = TimmBackbone(m)
    x = torch.randn(2, 3, 32, 32)
    tokens, got = traced_tokens(bb, x, ALL)
    final, keys, cls_attn, norms = _timm_reference(m, x)
    assert torch.equal(tokens, bb.tokens(x))  # observing does not change the forward
    assert (tokens - final).abs().max() < TOL
    assert (got["keys"] - keys).abs().max() < TOL
    assert (got["cls_attn"] - cls_attn).abs().max() < TOL
    assert (got["block_norms"] - norms).abs().max() < TOL
    assert torch.allclose(got["cls_attn"].sum(-1), torch.ones(2, 3))


def _mha_reference(blocks, ln1, attn, t, run_block):
    """Block norms and the last block's (head-wise attention, MHA output) from the library's own MHA."""
    norms = []
    for b in blocks[:-1]:
        t = run_block(b, t)
        norms.append(t.norm(dim=-1))
    h = ln1(blocks[-1])(t)
    out, weights = attn(blocks[-1])(h, h, h, need_weights=True, average_attn_weights=False)
    last = run_block(blocks[-1], t)
    norms.append(last.norm(dim=-1))
    return weights, out, torch.stack(norms, 1)


def _check_mha(bb, blocks, attn_of, x, weights, mha_out, norms):
    tokens, got = traced_tokens(bb, x, ALL)
    assert torch.equal(tokens, bb.tokens(x))
    assert (got["cls_attn"] - weights[:, :, 0]).abs().max() < TOL
    assert (got["block_norms"] - norms).abs().max() < TOL
    # values: the library's output is out_proj(attention @ v) per head; rebuild it from ours
    mha = attn_of(blocks[-1])
    b, n, d = got["values"].shape
    v = got["values"].reshape(b, n, mha.num_heads, -1).transpose(1, 2)
    rebuilt = mha.out_proj((weights @ v).transpose(1, 2).reshape(b, n, d))
    assert (rebuilt - mha_out).abs().max() < 1e-4
    # keys: the attention they give with our queries is the library's attention (all rows, not only CLS)
    assert got["keys"].shape == (b, n, d)


def test_torchvision_internals_match_multihead_attention():
    m = tiny_vit(seed=4)
    bb = TorchvisionBackbone(m, has_head=True)
    x = torch.randn(2, 3, 32, 32)
    t = m._process_input(x)
    t = torch.cat([m.class_token.expand(2, -1, -1), t], 1) + m.encoder.pos_embedding
    blocks = list(m.encoder.layers)
    weights, out, norms = _mha_reference(blocks, lambda b: b.ln_1, lambda b: b.self_attention, t,
                                         lambda b, t: b(t))
    _check_mha(bb, blocks, lambda b: b.self_attention, x, weights, out, norms)


def test_openclip_internals_match_multihead_attention():
    clip = tiny_clip(seed=5)
    bb = OpenCLIPBackbone(clip, {})
    x = torch.randn(2, 3, 32, 32)
    v = clip.visual
    blocks = list(v.transformer.resblocks)
    weights, out, norms = _mha_reference(blocks, lambda b: b.ln_1, lambda b: b.attn, v._embeds(x),
                                         lambda b, t: b(t))
    _check_mha(bb, blocks, lambda b: b.attn, x, weights, out, norms)


def test_keep_drops_patches_before_the_first_block():
    """The kept tokens equal a manual forward on the gathered tokens; dropped pixels change nothing."""
    m = tiny_vit(seed=6)
    bb = TorchvisionBackbone(m, has_head=True)
    x = torch.randn(2, 3, 32, 32)  # 4x4 grid of 8-pixel patches
    keep = torch.tensor([[0, 5, 10, 15], [3, 4, 8, 12]])
    tokens, _ = traced_tokens(bb, x, keep=keep)
    assert tokens.shape == (2, 1 + 4, 192)
    t = m._process_input(x)
    t = torch.cat([m.class_token.expand(2, -1, -1), t], 1) + m.encoder.pos_embedding
    gathered = torch.cat([t[:, :1], torch.stack([t[i, 1 + keep[i]] for i in range(2)])], 1)
    ref = m.encoder.ln(m.encoder.layers(gathered))
    assert (tokens - ref).abs().max() < TOL
    y = x.clone()  # scribble over one dropped patch of image 0 (patch 1: rows 0-7, columns 8-15)
    y[0, :, 0:8, 8:16] = 5.0
    assert torch.equal(traced_tokens(bb, y, keep=keep)[0], tokens)
    assert not torch.equal(bb.tokens(y), bb.tokens(x))


def test_forward_taps_emit_patch_part_of_internals():
    m = tiny_timm(seed=7)
    bb = TimmBackbone(m)

    class Model:  # forward_taps reads only the backbone and the arch's optional outputs
        backbone = bb

    x = torch.randn(3, 3, 32, 32)
    req = TapRequest((PoolingSpec.parse("cls"),), frozenset({"keys", "cls_attn", "block_norms", "pooled"}))
    out = forward_taps(Model(), x, req, "fp32")
    _, keys, cls_attn, norms = _timm_reference(m, x)
    assert out["keys"].dtype == torch.float16 and out["keys"].shape == (3, 16, 192)
    assert (out["keys"].float() - keys[:, 1:]).abs().max() < 2e-3
    assert (out["cls_attn"] - cls_attn[:, :, 1:]).abs().max() < TOL
    assert out["block_norms"].shape == (3, 2, 17)
    assert (out["pooled/cls"] - bb.tokens(x)[:, 0]).abs().max() < TOL


def test_backbone_without_blocks_is_refused():
    class NoBlocks(TorchvisionBackbone):
        def blocks(self):
            return []

    bb = NoBlocks(tiny_vit(), has_head=True)
    from lastvit_eval.errors import InputError

    with pytest.raises(InputError, match="no transformer blocks"):
        traced_tokens(bb, torch.randn(1, 3, 32, 32), frozenset({"keys"}))


def _eva_reference(m, x):
    """EVA02's own last attention: the probabilities (fused path off, captured at `attn_drop`) and its output."""
    attn = m.blocks[-1].attn
    attn.fused_attn = False
    seen = {}
    h1 = attn.attn_drop.register_forward_hook(lambda _m, _a, out: seen.__setitem__("p", out))
    h2 = attn.register_forward_hook(lambda _m, _a, out: seen.__setitem__("out", out))
    try:
        final = m.forward_features(x)
    finally:
        h1.remove()
        h2.remove()
        attn.fused_attn = True
    return final, seen["p"], seen["out"]


def test_eva02_keys_values_and_cls_attention_match_evas_own_attention():
    """EVA02 (rotary embeddings, q / v biases, k bias zero): CLS attention is EVA's own row, and the values
    rebuild EVA's own attention output; keys from `attn.qkv` alone (the old recomputation) would be far off."""
    import timm

    from lastvit_eval.engine.internals import attention_qkv

    torch.manual_seed(8)
    m = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=0, img_size=56).eval()
    with torch.no_grad():
        for k, p in m.named_parameters():
            if k.endswith(("q_bias", "v_bias")) or "norm" in k or "token" in k:
                p.add_(torch.randn_like(p) * 0.3)
    bb = TimmBackbone(m)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        tokens, got = traced_tokens(bb, x, ALL)
        final, probs, attn_out = _eva_reference(m, x)
    assert torch.equal(tokens, bb.tokens(x))
    assert (tokens - final).abs().max() < TOL
    assert (got["cls_attn"] - probs[:, :, 0]).abs().max() < 1e-5
    attn = m.blocks[-1].attn
    b, n, d = got["values"].shape
    v = got["values"].reshape(b, n, attn.num_heads, -1).transpose(1, 2)
    with torch.no_grad():
        rebuilt = attn.proj(attn.norm((probs @ v).transpose(1, 2).reshape(b, n, d)))
    assert (rebuilt - attn_out).abs().max() < 1e-4
    # every row of EVA's attention from our queries and keys, not only the CLS row
    seen = {}
    h = attn.register_forward_pre_hook(lambda _m, a, kw: seen.update(h=a[0], rope=kw.get("rope")), with_kwargs=True)
    with torch.no_grad():
        m.forward_features(x)
        h.remove()
        q, k, _, scale = attention_qkv(attn, seen["h"], seen["rope"])
        assert torch.equal(k.transpose(1, 2).reshape(b, n, d), got["keys"])
        assert ((q @ k.transpose(-2, -1) * scale).softmax(-1) - probs).abs().max() < 1e-5
        # the plain-qkv recomputation this replaces: no q / v bias, no rotary embedding
        qp, kp, _ = attn.qkv(seen["h"]).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        wrong = (qp[:, :, :1] @ kp.transpose(-2, -1) * scale).softmax(-1)[:, :, 0]
    assert (wrong - probs[:, :, 0]).abs().max() > 1e-3


def test_unknown_attention_is_refused_at_plan_time(tmp_path):
    """An attention module that is not one of the exactly-recomputed kinds: keys / CLS attention refused in one
    line before any forward; block norms (block outputs only) stay available."""
    from types import SimpleNamespace

    from timm.layers import Attention

    from lastvit_eval.errors import InputError
    from lastvit_eval.models import load_model
    from lastvit_eval.plan import _check_internal_taps

    class ShiftedAttention(Attention):  # e.g. a library's subclass adding its own bias or rotary embedding
        pass

    path = tmp_path / "dino.pth"
    torch.save(tiny_timm(seed=9).state_dict(), path)
    loaded = load_model(path)
    loaded.backbone.model.blocks[-1].attn.__class__ = ShiftedAttention
    lost = SimpleNamespace(name="corloc", taps=frozenset({"keys", "cls_attn"}))
    with pytest.raises(InputError, match=r"^corloc: needs cls_attn, keys of the last block, and dino.pth .* has a "
                                         r".*ShiftedAttention attention, whose queries and keys are not recomputed"):
        _check_internal_taps([lost], loaded)
    _check_internal_taps([SimpleNamespace(name="artifacts", taps=frozenset({"block_norms"}))], loaded)
    with pytest.raises(InputError, match="ShiftedAttention attention"):
        traced_tokens(loaded.backbone, torch.randn(1, 3, 32, 32), frozenset({"keys"}))
