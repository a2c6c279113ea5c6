"""Every image mode a dataset may hold -> 8-bit RGB, checked against a hand conversion in numpy of the
values written to a real file; files over PIL's pixel limit are bad images, never a crash."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from lastvit_eval.data.decode import BAD_IMAGE_ERRORS, load_rgb, read_size
from lastvit_eval.data.transform import TransformSpec
from lastvit_eval.engine.dataset import ImageDataset

RNG = np.random.default_rng(0)
H, W = 6, 9


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2).astype(np.uint8)


def _16bit_values() -> np.ndarray:
    """Both ends, the rounding boundaries (257k + 128 rounds down, 257k + 129 up) and random values."""
    edges = [0, 1, 128, 129, 256, 257, 385, 386, 32767, 32768, 65407, 65408, 65534, 65535]
    v = np.concatenate([edges, RNG.integers(0, 65536, H * W - len(edges))])
    return v.reshape(H, W)


def _expected_16(v: np.ndarray) -> np.ndarray:
    return _rgb(np.round(v.astype(np.float64) / 257.0))  # 257 is odd: v / 257 never ends in .5


def _decoded(path) -> np.ndarray:
    im = load_rgb(path)
    assert im.mode == "RGB" and im.size == (W, H)
    return np.asarray(im)


def test_16bit_png_scales_full_range_to_full_range(tmp_path):
    v = _16bit_values().astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(v).save(path)
    assert Image.open(path).mode == "I;16"
    out = _decoded(path)
    np.testing.assert_array_equal(out, _expected_16(v))
    assert out.min() == 0 and out.max() == 255 and 0 < out.mean() < 255  # not the all-white image of convert()


def test_16bit_big_endian_tiff(tmp_path):
    v = _16bit_values().astype(np.uint16)
    path = tmp_path / "g16b.tif"
    Image.frombytes("I;16B", (W, H), v.astype(">u2").tobytes()).save(path)
    assert Image.open(path).mode == "I;16B"
    np.testing.assert_array_equal(_decoded(path), _expected_16(v))


def test_32bit_integer_tiff_holding_16bit_values(tmp_path):
    v = _16bit_values().astype(np.int32)
    path = tmp_path / "i32.tif"
    Image.fromarray(v).save(path)
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(_decoded(path), _expected_16(v))
    Image.fromarray(v * 2).save(path)  # values past 65535: no scale is right, so it is a bad image
    with pytest.raises(ValueError, match="outside the 16-bit range"):
        load_rgb(path)


def _palette_image():
    palette = RNG.integers(0, 256, (256, 3)).astype(np.uint8)
    idx = RNG.integers(0, 256, (H, W)).astype(np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(palette.reshape(-1).tolist())
    return im, palette, idx


@pytest.mark.parametrize("transparency", [None, 7])
def test_palette_png_looks_up_the_palette_and_ignores_transparency(tmp_path, transparency):
    im, palette, idx = _palette_image()
    idx[0, 0] = 7  # a pixel that is transparent when transparency is set: its stored colour is kept
    im = Image.fromarray(idx, "P")
    im.putpalette(palette.reshape(-1).tolist())
    path = tmp_path / "p.png"
    im.save(path, **({} if transparency is None else {"transparency": transparency}))
    with Image.open(path) as back:
        assert back.mode == "P" and (("transparency" in back.info) == (transparency is not None))
    np.testing.assert_array_equal(_decoded(path), palette[idx])


def test_palette_with_per_entry_alpha_does_not_warn(tmp_path):
    im, palette, idx = _palette_image()
    path = tmp_path / "pa.png"
    im.save(path, transparency=bytes(range(256)))
    with Image.open(path) as back:
        assert isinstance(back.info["transparency"], bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL warns when such an image goes to RGB directly
        out = _decoded(path)
    np.testing.assert_array_equal(out, palette[idx])


def test_la_and_rgba_drop_alpha(tmp_path):
    la = RNG.integers(0, 256, (H, W, 2)).astype(np.uint8)
    la[..., 1] = 0  # fully transparent: the stored grey level is still what comes out
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(_decoded(tmp_path / "la.png"), _rgb(la[..., 0]))
    rgba = RNG.integers(0, 256, (H, W, 4)).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(_decoded(tmp_path / "rgba.png"), rgba[..., :3])


def test_cmyk_tiff(tmp_path):
    cmyk = RNG.integers(0, 256, (H, W, 4)).astype(np.uint8)
    path = tmp_path / "cmyk.tif"
    Image.frombytes("CMYK", (W, H), cmyk.tobytes()).save(path)
    assert Image.open(path).mode == "CMYK"
    c = cmyk.astype(np.float64)
    expected = np.round((255 - c[..., :3]) * (255 - c[..., 3:]) / 255)  # naive CMYK: (1 - C)(1 - K)
    np.testing.assert_array_equal(_decoded(path), expected.astype(np.uint8))


def test_grayscale_and_bilevel(tmp_path):
    g = RNG.integers(0, 256, (H, W)).astype(np.uint8)
    Image.fromarray(g, "L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(_decoded(tmp_path / "l.png"), _rgb(g))
    b = RNG.random((H, W)) > 0.5
    Image.fromarray(b).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    np.testing.assert_array_equal(_decoded(tmp_path / "b.png"), _rgb(b * 255))


def test_float_tiff_is_read_as_unit_range(tmp_path):
    f = RNG.random((H, W)).astype(np.float32)
    f[0, 0], f[0, 1] = 0.0, 1.0
    path = tmp_path / "f.tif"
    Image.fromarray(f).save(path)
    assert Image.open(path).mode == "F"
    np.testing.assert_array_equal(_decoded(path), _rgb(np.round(f.astype(np.float64) * 255)))
    for bad in (255.0, np.nan, -0.5):
        g = f.copy()
        g[2, 2] = bad
        Image.fromarray(g).save(path)
        with pytest.raises(ValueError, match=r"expected \[0, 1\]"):
            load_rgb(path)


def test_rgb_jpeg_is_unchanged(tmp_path):
    rgb = RNG.integers(0, 256, (H, W, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    np.testing.assert_array_equal(_decoded(tmp_path / "x.png"), rgb)


@pytest.mark.parametrize("size", [(40, 30), (50, 50)], ids=["bomb-warning", "bomb-error"])
def test_over_the_pixel_limit_is_a_bad_image(tmp_path, monkeypatch, size):
    """40x30 = 1200 px: PIL warns (over 1000); 50x50 = 2500 px: PIL raises (over twice the limit)."""
    path = tmp_path / "big.jpg"
    Image.new("RGB", size).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(Image.DecompressionBombError):
        load_rgb(path)
    with pytest.raises(Image.DecompressionBombError):
        read_size(path)
    assert issubclass(Image.DecompressionBombError, BAD_IMAGE_ERRORS)
    i, pixels, err = ImageDataset([path], TransformSpec(resize=16, crop=16))[0]
    assert (i, pixels) == (0, None) and err.startswith("DecompressionBombError")
