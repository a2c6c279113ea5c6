"""Zero-shot segmentation: protocol table, class files, resize rule and dataset readers on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lastvit_eval.errors import InputError
from lastvit_eval.segmentation.datasets import LabelDecoder, list_samples, read_label
from lastvit_eval.segmentation.protocol import (
    dataset_names,
    load_protocol,
    parse_class_names,
    prepare_image,
    read_class_names,
    rescale_size,
)

# published class counts of the benchmarks (SCLIP / NACLIP tables)
COUNTS = {"voc20": 20, "voc21": 21, "context59": 59, "context60": 60, "coco_object": 81,
          "coco_stuff164k": 171, "cityscapes": 19, "ade20k": 150}


def test_every_dataset_loads_with_its_published_class_count():
    assert sorted(dataset_names()) == sorted(COUNTS)
    for name, n in COUNTS.items():
        p = load_protocol(name)
        assert p.num_classes == n == len(p.classes)
        assert len(p.queries) == len(p.query_class) >= n
        assert (p.window, p.stride) == (224, 112)
        assert p.source and p.layout["img_dir"]


def test_protocol_facts_from_the_configs():
    voc20, voc21, ade, stuff, city = (load_protocol(n) for n in ("voc20", "voc21", "ade20k", "coco_stuff164k", "cityscapes"))
    assert voc20.reduce_zero_label and not voc20.background and voc20.prob_threshold == 0
    assert voc21.background and voc21.prob_threshold == 0.1 and voc21.logit_scale == 40
    assert voc21.classes[0][:2] == ("sky", "wall") and voc21.classes[15][0] == "person"  # background synonyms
    assert ade.reduce_zero_label and ade.resize == (2048, 336)
    assert stuff.resize == (2048, 448) and city.resize == (2048, 560)
    sclip = load_protocol("voc21", "sclip")
    assert (sclip.logit_scale, sclip.area_threshold) == (65, 0.1)
    v2 = load_protocol("voc20", "naclip_v2")
    assert v2.window is None and load_protocol("coco_stuff164k", "naclip_v2").resize == (2048, 336)
    with pytest.raises(InputError, match="unknown segmentation dataset"):
        load_protocol("voc2000")


def test_class_file_format(tmp_path):
    classes = parse_class_names("sky, wall ,tree\n\nperson\n", "x.txt")
    assert classes == [["sky", "wall", "tree"], ["person"]]
    bad = tmp_path / "bad.txt"
    bad.write_text("a, , b\n")
    with pytest.raises(InputError, match="bad.txt: line 1"):
        read_class_names(bad)
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    with pytest.raises(InputError, match="short.txt: 2 classes, voc20 has 20"):
        load_protocol("voc20", classes_file=short)


@pytest.mark.parametrize("hw,expected", [((375, 500), (336, 448)), ((500, 375), (448, 336)),
                                         ((1024, 2048), (560, 1120)), ((100, 3000), (68, 2048))])
def test_rescale_size_is_mmcv_rule(hw, expected):
    # short side 336 unless the long side would pass 2048 (then the long side is 2048)
    scale = (2048, 560) if hw == (1024, 2048) else (2048, 336)
    assert rescale_size(*hw, scale) == expected


def test_prepare_image_resizes_and_normalizes():
    arr = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    x = prepare_image(Image.fromarray(arr), (2048, 60), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert x.shape == (3, 60, 80)
    same = prepare_image(Image.fromarray(arr), None, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    ref = (torch.from_numpy(arr).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    assert torch.allclose(same, ref, atol=1e-5)


# ---- readers ------------------------------------------------------------------------------------------

def _png(path: Path, arr: np.ndarray, mode: str = "L") -> None:
    """Grayscale index PNG, or a palette PNG like VOC's SegmentationClass (indices + colour table)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if mode == "P":
        im = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    else:
        im = Image.fromarray(arr)
    im.save(path)


def _jpg(path: Path, h: int = 12, w: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(path)


def _voc(root: Path, ids=("2007_000033", "2007_000042")) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    lab = np.array([[0, 0, 15, 15], [255, 1, 20, 0]], np.uint8)
    for i in ids:
        _jpg(base / "JPEGImages" / f"{i}.jpg")
        _png(base / "SegmentationClass" / f"{i}.png", lab, mode="P")
    split = base / "ImageSets" / "Segmentation" / "val.txt"
    split.parent.mkdir(parents=True)
    split.write_text("\n".join(ids) + "\n")
    return base


def test_voc20_and_voc21_read_the_same_files_differently(tmp_path):
    _voc(tmp_path)
    s20, dec20 = list_samples(load_protocol("voc20"), tmp_path / "VOCdevkit")
    s21, dec21 = list_samples(load_protocol("voc21"), tmp_path)  # found below VOCdevkit/VOC2012
    assert [s.id for s in s20] == ["2007_000033", "2007_000042"] == [s.id for s in s21]
    assert s20[0].image.name == "2007_000033.jpg" and s20[0].label.suffix == ".png"
    # VOC20 (reduce_zero_label): background and boundary ignored, classes 1..20 -> 0..19
    np.testing.assert_array_equal(read_label(s20[0].label, dec20), [[255, 255, 14, 14], [255, 0, 19, 255]])
    np.testing.assert_array_equal(read_label(s21[0].label, dec21), [[0, 0, 15, 15], [255, 1, 20, 0]])


def test_voc_layout_errors_name_the_file(tmp_path):
    base = _voc(tmp_path)
    (base / "JPEGImages" / "2007_000042.jpg").unlink()
    with pytest.raises(InputError, match=r"2007_000042\.jpg: listed in val\.txt but missing"):
        list_samples(load_protocol("voc21"), base)
    _jpg(base / "JPEGImages" / "2007_000042.jpg")
    (base / "SegmentationClass" / "2007_000042.png").unlink()
    with pytest.raises(InputError, match=r"SegmentationClass/2007_000042\.png: missing label"):
        list_samples(load_protocol("voc21"), base)
    with pytest.raises(InputError, match="no JPEGImages/ folder"):
        list_samples(load_protocol("voc21"), tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets")
    with pytest.raises(InputError, match="not a folder"):
        list_samples(load_protocol("voc21"), tmp_path / "nowhere")


def test_label_errors_name_the_file(tmp_path):
    dec = LabelDecoder(num_classes=21)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(rgb)
    with pytest.raises(InputError, match="rgb.png: label image mode RGB"):
        read_label(rgb, dec)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(InputError, match="junk.png: cannot read label image"):
        read_label(junk, dec)
    out_of_range = tmp_path / "big.png"
    _png(out_of_range, np.array([[3, 40]]))
    with pytest.raises(InputError, match="big.png: label value 40 is not a class id 0..20"):
        read_label(out_of_range, dec)


def test_ade20k_reduce_zero_label_and_sorted_listing(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for stem in ("ADE_val_00000002", "ADE_val_00000001"):
        _jpg(base / "images" / "validation" / f"{stem}.jpg")
        _png(base / "annotations" / "validation" / f"{stem}.png", np.array([[0, 1, 150]]))
    samples, dec = list_samples(load_protocol("ade20k"), tmp_path)
    assert [s.id for s in samples] == ["ADE_val_00000001", "ADE_val_00000002"]
    np.testing.assert_array_equal(read_label(samples[0].label, dec), [[255, 0, 149]])


def test_cityscapes_nested_cities_train_ids_and_raw_ids(tmp_path):
    base = tmp_path / "cityscapes"
    for city, stem in (("lindau", "lindau_000000_000019"), ("frankfurt", "frankfurt_000000_000294")):
        _png(base / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", np.zeros((4, 4)))
        _png(base / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", np.array([[7, 8, 33, 0, 26, 255]]))
    samples, dec = list_samples(load_protocol("cityscapes"), tmp_path)
    assert [s.id for s in samples] == ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000000_000019"]
    # raw label ids: road 7 -> 0, sidewalk 8 -> 1, bicycle 33 -> 18, unlabeled 0 -> 255, car 26 -> 13
    np.testing.assert_array_equal(read_label(samples[0].label, dec), [[0, 1, 18, 255, 13, 255]])
    for s in samples:  # converted train-id files win when present
        _png(s.label.with_name(s.label.name.replace("labelIds", "labelTrainIds")), np.array([[5, 255]]))
    samples, dec = list_samples(load_protocol("cityscapes"), base)
    assert samples[0].label.name.endswith("_gtFine_labelTrainIds.png")
    np.testing.assert_array_equal(read_label(samples[0].label, dec), [[5, 255]])


def test_coco_stuff_and_coco_object_from_raw_stuffthingmaps(tmp_path):
    base = tmp_path / "coco_stuff164k"
    _jpg(base / "images" / "val2017" / "000000000139.jpg")
    # raw values = COCO category id - 1: person 0, bicycle 1, stop sign 12 (id 13), toothbrush 89 (id 90),
    # banner 91 (id 92, first stuff), wood 181 (id 182, last stuff), 255 unlabeled
    raw = np.array([[0, 1, 12, 89, 91, 181, 255]])
    _png(base / "annotations" / "val2017" / "000000000139.png", raw)
    s, dec = list_samples(load_protocol("coco_stuff164k"), tmp_path)
    np.testing.assert_array_equal(read_label(s[0].label, dec), [[0, 1, 11, 79, 80, 170, 255]])
    s, dec = list_samples(load_protocol("coco_object"), tmp_path)
    # things -> index + 1, stuff and unlabeled -> background 0 (SCLIP's cvt_coco_object.py)
    np.testing.assert_array_equal(read_label(s[0].label, dec), [[1, 2, 12, 80, 0, 0, 0]])
    # converted files (mmseg / SCLIP converters) are read as they are
    _png(base / "annotations" / "val2017" / "000000000139_labelTrainIds.png", np.array([[170, 255]]))
    _png(base / "annotations" / "val2017" / "000000000139_instanceTrainIds.png", np.array([[80, 0]]))
    s, dec = list_samples(load_protocol("coco_stuff164k"), base)
    np.testing.assert_array_equal(read_label(s[0].label, dec), [[170, 255]])
    s, dec = list_samples(load_protocol("coco_object"), base)
    np.testing.assert_array_equal(read_label(s[0].label, dec), [[80, 0]])


def test_context59_and_60(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2010"
    _jpg(base / "JPEGImages" / "2008_000002.jpg")
    _png(base / "SegmentationClassContext" / "2008_000002.png", np.array([[0, 1, 59]]))
    split = base / "ImageSets" / "SegmentationContext" / "val.txt"
    split.parent.mkdir(parents=True)
    split.write_text("2008_000002\n")
    s, dec = list_samples(load_protocol("context59"), tmp_path)
    np.testing.assert_array_equal(read_label(s[0].label, dec), [[255, 0, 58]])
    s, dec = list_samples(load_protocol("context60"), tmp_path)
    np.testing.assert_array_equal(read_label(s[0].label, dec), [[0, 1, 59]])


def test_prompts_are_queries_times_openai_templates():
    p = load_protocol("voc21")
    prompts = p.prompts()
    assert prompts.classnames[:2] == ("sky", "wall") and len(prompts.classnames) == len(p.query_class)
    assert len(prompts.templates) == 80 and all("{c}" in t for t in prompts.templates)
    assert prompts.templates[0] == "a bad photo of a {c}."
