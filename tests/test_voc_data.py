"""VOC devkit reader and the COCO20k-style subset, on real files written here (JPEG, XML, palette PNG, json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lxml import etree
from PIL import Image

from lastvit_eval.data.coco_subset import load_coco_subset, read_image_list
from lastvit_eval.data.voc import VOCDataset, read_segmentation, read_voc_annotation
from lastvit_eval.errors import InputError

# image id, (w, h), objects as (name, xmin, ymin, xmax, ymax, difficult, truncated) in VOC's 1-based inclusive pixels
VOC_IMAGES = [
    ("000005", (60, 40), [("chair", 1, 1, 60, 40, 0, 0)]),
    ("000007", (50, 30), [("car", 5, 6, 20, 25, 1, 0), ("dog", 10, 2, 30, 12, 0, 1)]),
    ("000009", (48, 48), [("person", 3, 4, 10, 40, 0, 0)]),
]


def write_xml(path: Path, image_id: str, size, objects, part: bool = False) -> None:
    ann = etree.Element("annotation")
    etree.SubElement(ann, "folder").text = "VOC2007"
    etree.SubElement(ann, "filename").text = f"{image_id}.jpg"
    s = etree.SubElement(ann, "size")
    for tag, v in (("width", size[0]), ("height", size[1]), ("depth", 3)):
        etree.SubElement(s, tag).text = str(v)
    for name, x0, y0, x1, y1, diff, trunc in objects:
        obj = etree.SubElement(ann, "object")
        etree.SubElement(obj, "name").text = name
        etree.SubElement(obj, "truncated").text = str(trunc)
        etree.SubElement(obj, "difficult").text = str(diff)
        bb = etree.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (x0, y0, x1, y1), strict=True):
            etree.SubElement(bb, tag).text = str(v)
        if part:  # person-layout parts carry their own <bndbox>; they are not objects
            p = etree.SubElement(obj, "part")
            etree.SubElement(p, "name").text = "head"
            pb = etree.SubElement(p, "bndbox")
            for tag in ("xmin", "ymin", "xmax", "ymax"):
                etree.SubElement(pb, tag).text = "2"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(etree.tostring(ann, pretty_print=True))


def write_palette_png(path: Path, labels: np.ndarray) -> None:
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[1:21] = np.arange(1, 21)[:, None] * 12  # colours that are not the indices
    palette[255] = (224, 224, 192)
    im.putpalette(palette.reshape(-1).tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """tmp/VOCdevkit/VOC2007 with images, XML, Main and Segmentation sets, and palette PNGs."""
    base = tmp_path / "VOCdevkit" / "VOC2007"
    rng = np.random.default_rng(0)
    for image_id, (w, h), objects in VOC_IMAGES:
        (base / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{image_id}.jpg")
        write_xml(base / "Annotations" / f"{image_id}.xml", image_id, (w, h), objects, part=image_id == "000009")
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n000007\n000009\n")
    (base / "ImageSets" / "Main" / "car_trainval.txt").write_text("000005 -1\n000007  1\n")
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("000007\n")
    seg = np.zeros((30, 50), dtype=np.uint8)
    seg[5:25, 4:20] = 7
    seg[4, 4:20] = 255
    write_palette_png(base / "SegmentationClass" / "000007.png", seg)
    return tmp_path


def test_devkit_layout_and_box_convention(voc_root: Path):
    for root in (voc_root, voc_root / "VOCdevkit", voc_root / "VOCdevkit" / "VOC2007"):
        ds = VOCDataset(root, "2007")
        assert ds.image_ids("trainval") == ["000005", "000007", "000009"]
    assert ds.image_ids("car_trainval") == ["000005", "000007"]
    assert ds.image_path("000005").is_file()
    anns = ds.annotations("trainval")
    whole = anns["000005"]
    assert whole.size == (60, 40)
    # 1-based inclusive (1, 1, 60, 40) covers the whole 60x40 image: pixel-edge (0, 0, 60, 40)
    assert whole.objects[0].box == (0.0, 0.0, 60.0, 40.0)
    two = anns["000007"]
    assert [(o.name, o.box, o.difficult, o.truncated) for o in two.objects] == [
        ("car", (4.0, 5.0, 20.0, 25.0), True, False), ("dog", (9.0, 1.0, 30.0, 12.0), False, True)]
    assert two.boxes().shape == (2, 4)
    assert two.boxes(exclude_hard=True).shape == (0, 4)
    assert len(anns["000009"].objects) == 1  # the <part> box is not an object


def test_box_covers_the_annotated_pixels(voc_root: Path):
    """Brute force: the pixel-edge box covers exactly the 1-based inclusive pixel indices of the XML."""
    ann = VOCDataset(voc_root, "2007").annotation("000007")
    x0, y0, x1, y1 = ann.objects[0].box
    w, h = ann.size
    cols, rows = np.arange(w) + 0.5, np.arange(h) + 0.5  # pixel centres, 0-based
    mask = (rows[:, None] >= y0) & (rows[:, None] < y1) & (cols[None] >= x0) & (cols[None] < x1)
    one_based_rows, one_based_cols = np.nonzero(mask)
    assert (one_based_cols.min() + 1, one_based_rows.min() + 1, one_based_cols.max() + 1, one_based_rows.max() + 1) \
        == (5, 6, 20, 25)


def test_segmentation_png_is_read_as_indices(voc_root: Path):
    ds = VOCDataset(voc_root, "2007")
    assert ds.image_ids("val", task="Segmentation") == ["000007"]
    seg = ds.segmentation("000007")
    assert seg.dtype == np.uint8 and seg.shape == (30, 50)
    assert set(np.unique(seg)) == {0, 7, 255}
    assert (seg[5:25, 4:20] == 7).all() and (seg[4, 4:20] == 255).all()


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p.write_text("<annotation><size><width>3"), "malformed XML"),
    (lambda p: p.write_text("<annotation><object/></annotation>"), "size"),
    (lambda p: p.write_text("<annotation><size><width>5</width><height>5</height></size>"
                            "<object><name>cat</name></object></annotation>"), "<bndbox>"),
    (lambda p: p.write_text("<annotation><size><width>5</width><height>5</height></size><object><name>cat</name>"
                            "<bndbox><xmin>a</xmin><ymin>1</ymin><xmax>3</xmax><ymax>3</ymax></bndbox></object>"
                            "</annotation>"), "numeric"),
    (lambda p: p.write_text("<annotation><size><width>5</width><height>5</height></size><object><name>cat</name>"
                            "<bndbox><xmin>4</xmin><ymin>1</ymin><xmax>2</xmax><ymax>3</ymax></bndbox></object>"
                            "</annotation>"), "empty box"),
    (lambda p: p.write_text("<html/>"), "<annotation>"),
])
def test_malformed_xml_is_one_line_input_error(tmp_path: Path, mutate, message):
    path = tmp_path / "bad.xml"
    mutate(path)
    with pytest.raises(InputError, match=message) as e:
        read_voc_annotation(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_malformed_devkit_inputs(voc_root: Path, tmp_path: Path):
    base = voc_root / "VOCdevkit" / "VOC2007"
    ds = VOCDataset(voc_root, "2007")
    with pytest.raises(InputError, match="test.txt"):
        ds.image_ids("test")
    (base / "ImageSets" / "Main" / "bad.txt").write_text("000005.jpg\n")
    with pytest.raises(InputError, match=r"bad.txt:1"):
        ds.image_ids("bad")
    (base / "Annotations" / "000009.xml").unlink()
    with pytest.raises(InputError, match="000009.xml"):
        ds.annotations("trainval")
    with pytest.raises(InputError, match="000005.png"):
        ds.segmentation("000005")
    with pytest.raises(InputError, match="VOC2012"):
        VOCDataset(voc_root, "2012")
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (4, 4)).save(rgb)
    with pytest.raises(InputError, match="mode RGB"):
        read_segmentation(rgb)
    odd = tmp_path / "odd.png"
    write_palette_png(odd, np.full((3, 3), 37))
    with pytest.raises(InputError, match="label 37"):
        read_segmentation(odd)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(InputError, match="junk.png"):
        read_segmentation(junk)


# --- COCO subset -----------------------------------------------------------------------------------------------

def _coco(tmp_path: Path) -> Path:
    data = {
        "images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 64, "height": 48},
                   {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "width": 30, "height": 40},
                   {"id": 30, "file_name": "COCO_train2014_000000000030.jpg", "width": 30, "height": 40}],
        "annotations": [
            {"id": 1, "image_id": 9, "category_id": 1, "bbox": [2.5, 3.5, 10.0, 20.25], "area": 1, "iscrowd": 0},
            {"id": 2, "image_id": 9, "category_id": 2, "bbox": [0, 0, 64, 48], "area": 1, "iscrowd": 1},
            {"id": 3, "image_id": 25, "category_id": 2, "bbox": [1.6, 0.4, 3.0, 4.0], "area": 1, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}],
    }
    path = tmp_path / "instances_train2014.json"
    path.write_text(json.dumps(data))
    return path


def test_coco20k_list_format(tmp_path: Path):
    # LOST's datasets/coco_20k_filenames.txt: "train2014/COCO_train2014_<12 digits>.jpg" per line
    lst = tmp_path / "coco_20k_filenames.txt"
    lst.write_text("train2014/COCO_train2014_000000000025.jpg\ntrain2014/COCO_train2014_000000000009.jpg\n\n30\n")
    assert read_image_list(lst) == [25, 9, 30]
    lst.write_text("train2014/COCO_train2014_000000000025.jpg\nnot an image\n")
    with pytest.raises(InputError, match=r"coco_20k_filenames.txt:2"):
        read_image_list(lst)
    lst.write_text("25\n25\n")
    with pytest.raises(InputError, match="repeat"):
        read_image_list(lst)
    with pytest.raises(InputError, match="does not exist"):
        read_image_list(tmp_path / "missing.txt")


def test_coco_subset_boxes_like_lost(tmp_path: Path):
    path = _coco(tmp_path)
    sub = load_coco_subset(path, [25, 9, 30])
    assert list(sub) == [25, 9, 30]
    nine = sub[9]
    assert nine.size == (64, 48) and nine.n_crowd == 1 and nine.category_ids == [1]
    # (2.5, 3.5, 12.5, 23.75) rounded half to even, as Python's round in extract_gt_COCO: (2, 4, 12, 24)
    np.testing.assert_array_equal(nine.boxes, [[2, 4, 12, 24]])
    np.testing.assert_array_equal(sub[25].boxes, [[2, 0, 5, 4]])
    assert sub[30].boxes.shape == (0, 4)
    exact = load_coco_subset(path, [9], round_coords=False)
    np.testing.assert_allclose(exact[9].boxes, [[2.5, 3.5, 12.5, 23.75]])
    assert list(load_coco_subset(path)) == [9, 25, 30]


def test_coco_subset_errors(tmp_path: Path):
    path = _coco(tmp_path)
    with pytest.raises(InputError, match=r"instances_train2014.json: 1 listed image ids .*first: 77"):
        load_coco_subset(path, [9, 77])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json: malformed"):
        load_coco_subset(bad)
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "bbox": [1, 2]}],
                               "categories": []}))
    with pytest.raises(InputError, match="bad.json"):
        load_coco_subset(bad)
