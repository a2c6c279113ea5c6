"""Sliding-window inference: window arithmetic, single-window identity, brute-force overlap average."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lastvit_eval.segmentation.sliding import iter_slide_logits, slide_logits, window_positions


def _dense_fn(patch: int = 8, channels: int = 5, seed: int = 0):
    """A patch-embedding conv: [B, 3, h, w] -> [B, C, h / patch, w / patch], records its batch sizes."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(3, channels, patch, stride=patch)
    calls: list[tuple[int, ...]] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        with torch.no_grad():
            return conv(x)

    return fn, calls


def test_window_positions_published_examples():
    assert window_positions(224, 224) == [(0, 0, 224, 224)]
    # 336 x 448 (VOC at short side 336): 2 x 3 windows, the last ones on the border
    assert window_positions(336, 448) == [(y, x, y + 224, x + 224) for y in (0, 112) for x in (0, 112, 224)]
    # 300 rows: h_grids = (300 - 224 + 111) // 112 + 1 = 2, the second shifted back to end at 300
    assert [w[0] for w in window_positions(300, 224)] == [0, 76]
    # smaller than a window: one window of the image's own size
    assert window_positions(100, 150) == [(0, 0, 100, 150)]


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 900), w=st.integers(1, 900), window=st.sampled_from([224, 32]), stride=st.sampled_from([112, 16, 7]))
def test_windows_cover_the_image_inside_its_bounds(h, w, window, stride):
    if stride > window:
        with pytest.raises(ValueError, match="would leave pixels"):
            window_positions(h, w, window, stride)
        return
    boxes = window_positions(h, w, window, stride)
    covered = np.zeros((h, w), bool)
    for y1, x1, y2, x2 in boxes:
        assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
        assert (y2 - y1, x2 - x1) == (min(window, h), min(window, w))
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    assert max(b[2] for b in boxes) == h and max(b[3] for b in boxes) == w


def test_one_window_equals_a_single_forward():
    fn, calls = _dense_fn(patch=16)
    img = torch.randn(3, 224, 224)
    out = slide_logits([img], fn, out_sizes=[(300, 250)])[0]
    ref = fn(img[None])
    ref = F.interpolate(F.interpolate(ref, size=(224, 224), mode="bilinear", align_corners=False),
                        size=(300, 250), mode="bilinear", align_corners=False)[0]
    assert out.shape == (5, 300, 250)
    assert torch.allclose(out, ref, atol=1e-6)
    assert calls[0] == (1, 3, 224, 224)


def _brute_force(img: torch.Tensor, fn, window: int, stride: int) -> np.ndarray:
    """Every window start on the stride grid, shifted to fit; per pixel, the mean over windows covering it."""
    H, W = img.shape[-2:]
    starts_y = sorted({min(y, max(H - window, 0)) for y in range(0, max(H - window, 0) + stride, stride)})
    starts_x = sorted({min(x, max(W - window, 0)) for x in range(0, max(W - window, 0) + stride, stride)})
    maps = []
    for y in starts_y:
        for x in starts_x:
            h, w = min(window, H), min(window, W)
            up = F.interpolate(fn(img[None, :, y:y + h, x:x + w]), size=(h, w), mode="bilinear", align_corners=False)
            maps.append((y, x, h, w, up[0].numpy()))
    C = maps[0][4].shape[0]
    out = np.zeros((C, H, W))
    for i in range(H):
        for j in range(W):
            vals = [m[:, i - y, j - x] for y, x, h, w, m in maps if y <= i < y + h and x <= j < x + w]
            assert vals, f"pixel {(i, j)} not covered"
            out[:, i, j] = np.mean(vals, axis=0)
    return out


@pytest.mark.parametrize("hw", [(50, 70), (32, 100), (20, 45)])  # (20, 45): shorter than a window
def test_overlap_average_matches_brute_force(hw):
    fn, _ = _dense_fn()
    img = torch.randn(3, *hw, generator=torch.Generator().manual_seed(hw[0]))
    out = slide_logits([img], fn, window=32, stride=16, batch_size=4)[0]
    assert out.shape[-2:] == img.shape[-2:]
    np.testing.assert_allclose(out.numpy(), _brute_force(img, fn, 32, 16), atol=1e-5)


def test_batches_mix_images_and_do_not_change_results():
    fn, calls = _dense_fn()
    gen = torch.Generator().manual_seed(1)
    imgs = [torch.randn(3, 50, 70, generator=gen), torch.randn(3, 16, 40, generator=gen),
            torch.randn(3, 32, 32, generator=gen), torch.randn(3, 64, 48, generator=gen)]
    sizes = [(100, 140), None, (7, 9), (64, 48)]
    one_by_one = [slide_logits([im], fn, [s], window=32, stride=16, batch_size=1)[0] for im, s in zip(imgs, sizes, strict=True)]
    calls.clear()
    batched = slide_logits(imgs, fn, sizes, window=32, stride=16, batch_size=5)
    for a, b, im, s in zip(one_by_one, batched, imgs, sizes, strict=True):
        assert b.shape[-2:] == (s or tuple(im.shape[-2:]))
        assert torch.allclose(a, b, atol=1e-6)
    n_windows = sum(len(window_positions(*im.shape[-2:], 32, 16)) for im in imgs)
    assert sum(c[0] for c in calls) == n_windows and max(c[0] for c in calls) <= 5
    assert any(c[0] > 1 for c in calls)


def test_results_stream_before_all_images_are_read():
    fn, _ = _dense_fn()
    read = []

    def images():
        for k in range(4):
            read.append(k)
            yield torch.randn(3, 32, 32)

    it = iter_slide_logits(images(), fn, window=32, stride=16, batch_size=1)
    next(it)
    assert len(read) == 1


def test_whole_image_mode_without_windows():
    fn, calls = _dense_fn()
    img = torch.randn(3, 40, 64)
    out = slide_logits([img], fn, [(20, 30)], window=None)[0]
    ref = F.interpolate(F.interpolate(fn(img[None]), size=(40, 64), mode="bilinear", align_corners=False),
                        size=(20, 30), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(out, ref, atol=1e-6)
