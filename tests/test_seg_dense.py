"""Dense CLIP embeddings against open_clip's own modules, and SCLIP's logits -> labels rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import tiny_clip

from lastvit_eval.errors import InputError
from lastvit_eval.segmentation.dense import cosine_logits, dense_embeddings, labels_from_logits
from lastvit_eval.segmentation.miou import SegScores
from lastvit_eval.segmentation.sliding import slide_logits


@pytest.fixture(scope="module")
def visual():
    return tiny_clip(seed=3).visual  # 32 px, patch 8 -> 4 x 4 grid, width 192, 2 blocks, output 32


def _grid(tokens: torch.Tensor) -> torch.Tensor:
    b, n, e = tokens.shape
    g = int(n ** 0.5)
    return tokens.reshape(b, g, g, e).permute(0, 3, 1, 2)


def test_plain_equals_open_clip_output_tokens(visual):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = dense_embeddings(visual, x, "plain")
    visual.output_tokens = True
    try:
        with torch.no_grad():
            _, tokens = visual(x)  # open_clip: patch tokens after ln_post, before proj
    finally:
        visual.output_tokens = False
    assert out.shape == (3, 32, 4, 4)
    torch.testing.assert_close(out, _grid(tokens @ visual.proj), atol=1e-4, rtol=0)


def _last_block_with_identity_attention(visual, x: torch.Tensor, whole_block: bool) -> torch.Tensor:
    """Run open_clip's own modules; in the last block every token attends only to itself (a -inf mask
    off the diagonal), so its attention returns out_proj(value) exactly as MaskCLIP's skip does."""
    blocks = visual.transformer.resblocks
    n = x.shape[1]
    eye = torch.full((n, n), float("-inf"))
    eye.fill_diagonal_(0.0)
    with torch.no_grad():
        for blk in blocks[:-1]:
            x = blk(x)
        last = blocks[-1]
        if whole_block:  # residual + MLP kept (MaskCLIP)
            y = last(x, attn_mask=eye)
        else:  # the value path alone
            h = last.ln_1(x)
            y = last.attn(h, h, h, need_weights=False, attn_mask=eye)[0]
        return _grid(visual.ln_post(y)[:, 1:] @ visual.proj)


@pytest.mark.parametrize("mode,whole", [("maskclip", True), ("value", False)])
def test_value_modes_equal_identity_attention_in_open_clip(visual, mode, whole):
    assert visual.transformer.resblocks[-1].attn.batch_first  # open_clip 3.x layout
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens_in = visual._embeds(x)
    ref = _last_block_with_identity_attention(visual, tokens_in, whole)
    out = dense_embeddings(visual, x, mode)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    assert not torch.allclose(out, dense_embeddings(visual, x, "plain"), atol=1e-3)  # the modes differ


def test_unknown_mode_and_tower(visual):
    with pytest.raises(InputError, match="unknown dense mode"):
        dense_embeddings(visual, torch.zeros(1, 3, 32, 32), "sclip")
    with pytest.raises(InputError, match="open_clip VisionTransformer"):
        dense_embeddings(torch.nn.Linear(2, 2), torch.zeros(1, 3, 32, 32))


def test_cosine_logits():
    dense = torch.randn(2, 8, 3, 5)
    text = torch.randn(4, 8)
    out = cosine_logits(dense, text)
    d = dense[1, :, 2, 4]
    ref = torch.nn.functional.cosine_similarity(d[None], text, dim=1)
    torch.testing.assert_close(out[1, :, 2, 4], ref, atol=1e-6, rtol=0)


def _labels_reference(logits: np.ndarray, query_class, scale, thd, area_thd):
    """SCLIP postprocess_result, pixel by pixel in plain Python."""
    q, h, w = logits.shape
    n_cls = max(query_class) + 1
    probs = np.zeros((n_cls, h, w))
    for i in range(h):
        for j in range(w):
            e = np.exp(scale * logits[:, i, j] - np.max(scale * logits[:, i, j]))
            p = e / e.sum()
            for k in range(q):
                probs[query_class[k], i, j] = max(probs[query_class[k], i, j], p[k])
    if area_thd is not None:
        arg = probs.argmax(0)
        area = [np.sum(arg == c) for c in range(1, n_cls)]
        for c in range(1, n_cls):
            if not area[c - 1] > area_thd * sum(area):
                probs[c] = 0
    pred = probs.argmax(0)
    pred[probs.max(0) < thd] = 0
    return pred


@pytest.mark.parametrize("thd,area", [(0.0, None), (0.1, None), (0.4, None), (0.1, 0.2)])
def test_labels_follow_sclip_postprocessing(thd, area):
    rng = np.random.default_rng(0)
    query_class = [0, 0, 0, 1, 2, 2, 3, 4]  # background with synonyms, class 2 with two names
    logits = rng.normal(0.2, 0.05, (len(query_class), 9, 11)).astype(np.float32)
    out = labels_from_logits(torch.from_numpy(logits), query_class, 40.0, thd, area)
    ref = _labels_reference(logits.astype(np.float64), query_class, 40.0, thd, area)
    np.testing.assert_array_equal(out.numpy(), ref)
    if thd == 0.4:
        assert (ref == 0).any() and (ref != 0).any()


def test_end_to_end_on_a_tiny_clip(visual):
    """Plumbing: windows of a 48 x 64 image through the tower, text embeddings, labels, mIoU."""
    text = torch.randn(3, 32, generator=torch.Generator().manual_seed(2))

    def dense_fn(windows: torch.Tensor) -> torch.Tensor:
        return cosine_logits(dense_embeddings(visual, windows, "maskclip"), text)

    img = torch.randn(3, 48, 64, generator=torch.Generator().manual_seed(3))
    (logits,) = slide_logits([img], dense_fn, [(24, 32)], window=32, stride=16)
    pred = labels_from_logits(logits, [0, 1, 2])
    scores = SegScores(3)
    scores.update(pred, pred)
    assert logits.shape == (3, 24, 32) and scores.miou() == 100.0
