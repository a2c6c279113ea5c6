"""Hostile datasets: annotations that do not fit their images, broken COCO files, unreadable folders,
roots that are files, non-positive limits. Each becomes a correct result or one InputError line that
names the file(s); under on_bad_* = "skip" the image is dropped under its own reason."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import IMAGES, write_jpeg, write_voc_xml
from PIL import Image

from lastvit_eval.data.boxes import Annotation, Box, load_boxes
from lastvit_eval.data.filters import FilterSpec, apply_filter
from lastvit_eval.data.images import first_n, index_images
from lastvit_eval.data.pib import load_pib_data
from lastvit_eval.data.recognition import from_folder, from_imagenet
from lastvit_eval.errors import InputError

SPEC = FilterSpec()
ALL = FilterSpec(single_object=False, max_box_area=None)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _rewrite_xml(root: Path, image_id: str, size, boxes) -> Path:
    wnid = next(w for i, w, _, _ in IMAGES if i == image_id)
    path = root / "bbox" / f"{image_id}.xml"
    write_voc_xml(path, image_id, size, boxes, wnid)
    return path


# 1. the size written in the annotation against the image's real size

def test_annotation_for_a_smaller_image_is_named_with_both_files(tmp_path):
    """The reported case: an XML written for 75x54 next to a 151x108 JPEG."""
    root = tmp_path / "ds"
    write_jpeg(root / "val" / "n1" / "a.JPEG", (151, 108), seed=0)
    write_jpeg(root / "val" / "n1" / "b.JPEG", (151, 108), seed=1)
    write_voc_xml(root / "bbox" / "a.xml", "a", (75, 54), [(10, 10, 30, 30)], "n1")
    write_voc_xml(root / "bbox" / "b.xml", "b", (151, 108), [(10, 10, 30, 30)], "n1")
    with pytest.raises(InputError) as e:
        load_pib_data(root, None, SPEC)
    msg = _one_line(e)
    assert "a.xml: annotation size 75x54 differs from the image's 151x108" in msg and "a.JPEG" in msg
    data = load_pib_data(root, None, SPEC, on_bad_annotation="skip")
    assert data.dropped == {"annotation size differs from image": ["a"]}
    assert [r.image_id for r in data.records] == ["b"]


def test_coco_image_size_is_compared_too(imagenet_root):
    js = imagenet_root / "coco.json"
    d = json.loads(js.read_text())
    d["images"][2]["width"] //= 2  # img_0003
    js.write_text(json.dumps(d))
    with pytest.raises(InputError, match=r"coco.json \(image img_0003.JPEG\): annotation size 100x100 differs"):
        load_pib_data(imagenet_root, js, SPEC)
    data = load_pib_data(imagenet_root, js, SPEC, on_bad_annotation="skip")
    assert data.dropped["annotation size differs from image"] == ["img_0003"]


def test_bad_choice_is_refused(imagenet_root):
    with pytest.raises(InputError, match="on_bad_annotation must be 'fail' or 'skip'"):
        load_pib_data(imagenet_root, None, SPEC, on_bad_annotation="ignore")


# 2. invalid boxes get their own reasons (img_0001 is 120x90)

@pytest.mark.parametrize(
    "box, reason",
    [
        ((130, 10, 140, 20), "box outside the image"),  # past the right edge entirely
        ((10, 10, 121, 50), "box outside the image"),  # one pixel past the right edge
        ((10, 10, 50, 91), "box outside the image"),  # one pixel past the bottom edge
        ((-5, 10, 30, 40), "invalid box (zero area, inverted or negative)"),
        ((30, 10, 30, 40), "invalid box (zero area, inverted or negative)"),
        ((40, 10, 30, 40), "invalid box (zero area, inverted or negative)"),
        ((10, 40, 30, 10), "invalid box (zero area, inverted or negative)"),
        ((float("nan"), 10, 30, 40), "non-finite box coordinate (NaN or inf)"),
        ((10, 10, float("inf"), 40), "non-finite box coordinate (NaN or inf)"),
    ],
)
def test_invalid_box_reason_skip_and_fail(imagenet_root, box, reason):
    xml = _rewrite_xml(imagenet_root, "img_0001", (120, 90), [box])
    ann = load_boxes(xml)
    kept, dropped = apply_filter(["img_0001"], ann, [(120, 90)], ALL)
    assert kept == [] and dropped == {reason: ["img_0001"]}
    data = load_pib_data(imagenet_root, None, SPEC, on_bad_annotation="skip")
    assert data.dropped[reason] == ["img_0001"]
    assert "img_0001" not in [r.image_id for r in data.records]
    with pytest.raises(InputError) as e:
        load_pib_data(imagenet_root, None, SPEC)
    msg = _one_line(e)
    assert msg.startswith(str(xml)) and "box 0 (" in msg and "img_0001.JPEG" in msg


def test_box_touching_the_far_edges_is_inside(imagenet_root):
    """Pixel-edge coordinates: [100, 120) x [70, 90) is the bottom-right corner of a 120x90 image."""
    _rewrite_xml(imagenet_root, "img_0001", (120, 90), [(100, 70, 120, 90)])
    data = load_pib_data(imagenet_root, None, SPEC)
    assert "img_0001" in [r.image_id for r in data.records]


def test_nan_in_loc_csv_is_its_own_reason(imagenet_root):
    csv = imagenet_root / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    lines[1] = "img_0001,n01440764 nan 12 40 50"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"LOC_val_solution.csv:2: box 0 \(nan, 12, 40, 50\) has a non-finite"):
        load_pib_data(imagenet_root, csv, SPEC)
    data = load_pib_data(imagenet_root, csv, SPEC, on_bad_annotation="skip")
    assert data.dropped["non-finite box coordinate (NaN or inf)"] == ["img_0001"]


def test_xml_size_must_be_whole_pixels(imagenet_root):
    xml = imagenet_root / "bbox" / "img_0001.xml"
    xml.write_text(xml.read_text().replace("<width>120</width>", "<width>120.5</width>"))
    with pytest.raises(InputError, match=r"img_0001.xml: <size> must hold whole pixels, got 120.5x90"):
        load_boxes(xml)


# 3. COCO files

def _coco(imagenet_root: Path, mutate) -> Path:
    js = imagenet_root / "coco.json"
    d = json.loads(js.read_text())
    mutate(d)
    js.write_text(json.dumps(d))
    return js


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("annotations"), "no 'annotations' key"),
        (lambda d: d.pop("images"), "no 'images' key"),
        (lambda d: d.update(categories=[]), "'categories' is empty"),
        (lambda d: d["annotations"][3].update(category_id=99), r"annotations\[3\] \(id 4\) has category_id 99, not in"),
        (lambda d: d["annotations"][0].pop("bbox"), r"annotations\[0\] \(id 1\) has no 'bbox'"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"has bbox \[1, 2, 3\]; expected \[x, y, width"),
        (lambda d: d["annotations"][0].update(bbox=[1, "a", 3, 4]), "expected \\[x, y, width"),
        (lambda d: d["annotations"][1].update(id=1), "annotation id 1 appears twice"),
        (lambda d: d["images"][1].update(file_name="x/img_0001.jpg"), "share the image id 'img_0001'"),
        (lambda d: d["images"][1].update(width=-64), r"images\[1\] \(img_0002.JPEG\) has width -64"),
        (lambda d: d.update(annotations={}), "'annotations' must be a list"),
    ],
)
def test_broken_coco_files_name_the_problem(imagenet_root, mutate, message):
    js = _coco(imagenet_root, mutate)
    with pytest.raises(InputError) as e:
        load_boxes(js)
    msg = _one_line(e)
    assert msg.startswith(f"{js}: ")
    assert re.search(message, msg), msg


def test_coco_top_level_list(imagenet_root):
    js = imagenet_root / "coco.json"
    js.write_text("[]")
    with pytest.raises(InputError, match="top level is a list"):
        load_boxes(js)


def test_coco_negative_width_is_an_invalid_box(imagenet_root):
    def neg(d):
        d["annotations"][0]["bbox"][2] = -30  # img_0001: x1 = x0 - 30

    js = _coco(imagenet_root, neg)
    with pytest.raises(InputError, match=r"coco.json \(image img_0001.JPEG\): box 0 \(10, 12, -20, 50\) has zero"):
        load_pib_data(imagenet_root, js, SPEC)
    data = load_pib_data(imagenet_root, js, SPEC, on_bad_annotation="skip")
    assert data.dropped["invalid box (zero area, inverted or negative)"] == ["img_0001"]


def test_coco_unchanged_still_matches_xml(imagenet_root):
    """The stricter reader keeps the boxes of a good file (names included)."""
    a, b = load_boxes(imagenet_root / "coco.json"), load_boxes(imagenet_root / "bbox")
    assert {k: [(*x.as_tuple(), x.name) for x in v.boxes] for k, v in a.items()} == {
        k: [(*x.as_tuple(), x.name) for x in v.boxes] for k, v in b.items()}
    assert all(a[k].size == b[k].size for k in a)


# 4 (header side). a file over PIL's pixel limit in the PiB index

def test_pixel_limit_in_pib_headers_skip_and_fail(imagenet_root, monkeypatch):
    """img_0003 (200x100 = 20000 px) and img_0005 (18000 px) are over a 15000 px limit: PIL warns."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 15000)
    data = load_pib_data(imagenet_root, None, SPEC, on_bad_image="skip")
    assert sorted(data.dropped["image over PIL's pixel limit"]) == ["img_0003", "img_0005"]
    with pytest.raises(InputError) as e:
        load_pib_data(imagenet_root, None, SPEC, on_bad_image="fail")
    assert "img_0003.JPEG: image over PIL's pixel limit" in _one_line(e)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 9500)  # 20000 > 2 x 9500: PIL raises, not warns
    data = load_pib_data(imagenet_root, None, ALL, on_bad_image="skip")
    assert "img_0003" in data.dropped["image over PIL's pixel limit"]


# 5. unreadable files and folders

@pytest.fixture
def deny_unreadable(monkeypatch):
    """chmod 000 stops reads for normal users only; as root, emulate the kernel's permission check on
    the same mode bits (os.scandir for folders, os.access for files), so the test means the same."""
    if os.geteuid() != 0:
        return
    real_scandir, real_access = os.scandir, os.access

    def no_read(p) -> bool:
        return not isinstance(p, int) and os.stat(p).st_mode & 0o444 == 0

    def scandir(path="."):
        if no_read(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_scandir(path)

    def access(path, mode, **kw):
        return not (mode & os.R_OK and no_read(path)) and real_access(path, mode, **kw)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "access", access)


@pytest.fixture
def locked(imagenet_root, deny_unreadable):
    """One class folder (2 images) and one image in another class without read permission."""
    folder = imagenet_root / "val" / "n01443537"
    image = imagenet_root / "val" / "n01491361" / "img_0008.JPEG"
    folder.chmod(0)
    image.chmod(0)
    yield folder, image
    folder.chmod(stat.S_IRWXU)
    image.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_unreadable_folder_and_file_are_reported(imagenet_root, locked):
    folder, image = locked
    with pytest.raises(InputError) as e:
        index_images(imagenet_root)
    assert _one_line(e).startswith(f"{folder}: cannot list folder") and "2 unreadable" in str(e.value)
    bad: list = []
    recs = index_images(imagenet_root, unreadable=bad)
    assert len(recs) == 5  # 8 - 2 in the folder - 1 file
    assert [(p, why.split(" (")[0]) for p, why in bad] == [(str(folder), "cannot list folder"),
                                                           (str(image), "no read permission")]


def test_unreadable_in_recognition_sets(imagenet_root, locked):
    folder, image = locked
    val = from_imagenet(imagenet_root, "val")
    assert len(val) == 5 and [p for p, _ in val.unreadable] == [str(folder), str(image)]
    assert val.subset(np.arange(2)).unreadable == val.unreadable
    fold = from_folder(imagenet_root / "val")
    assert len(fold) == 5 and [p for p, _ in fold.unreadable] == [str(folder), str(image)]


def test_unreadable_in_pib_skip_and_fail(imagenet_root, locked):
    folder, image = locked
    data = load_pib_data(imagenet_root, None, SPEC, on_bad_image="skip")
    assert data.dropped["unreadable file or folder"] == [str(folder), str(image)]
    assert data.report["found"] == 5
    with pytest.raises(InputError) as e:
        load_pib_data(imagenet_root, None, SPEC, on_bad_image="fail")
    assert "2 unreadable file(s) or folder(s)" in _one_line(e)


def test_broken_symlink_is_reported(imagenet_root):
    link = imagenet_root / "val" / "n01440764" / "img_0099.JPEG"
    link.symlink_to(imagenet_root / "gone.JPEG")
    bad: list = []
    assert len(index_images(imagenet_root, unreadable=bad)) == 8
    assert bad == [(str(link), "broken symbolic link")]


# 6. roots that are files, or missing

def test_root_given_as_a_file(imagenet_root):
    f = next((imagenet_root / "val").rglob("*.JPEG"))
    for call in (lambda: index_images(f), lambda: from_imagenet(f, "val"), lambda: load_pib_data(f, None, SPEC)):
        with pytest.raises(InputError, match=f"^{f}: dataset root is a file, not a folder$"):
            call()
    with pytest.raises(InputError, match=f"^{f}: image folder is a file, not a folder$"):
        from_folder(f)
    with pytest.raises(InputError, match="dataset root does not exist"):
        index_images(imagenet_root / "missing")
    with pytest.raises(InputError, match="image folder does not exist"):
        from_folder(imagenet_root / "missing")


# 7. limits

@pytest.mark.parametrize("limit", [-5, 0, True, 2.5])
def test_non_positive_or_non_integer_limit_is_refused(imagenet_root, limit):
    with pytest.raises(InputError, match="limit must be a positive number of images"):
        index_images(imagenet_root, limit=limit)
    with pytest.raises(InputError, match="limit must be a positive number of images"):
        first_n([1, 2, 3], limit)


def test_limit_keeps_the_first_images(imagenet_root):
    assert [r.image_id for r in index_images(imagenet_root, limit=3)] == ["img_0001", "img_0002", "img_0003"]
    assert first_n([1, 2, 3], np.int64(2)) == [1, 2] and first_n([1, 2], None) == [1, 2]


# masks: the same checks

def test_npy_mask_of_another_size(imagenet_root):
    masks = imagenet_root / "masks"
    masks.mkdir()
    for image_id, _, (w, h), boxes in IMAGES:
        m = np.zeros((h, w), dtype=np.uint8)
        x0, y0, x1, y1 = boxes[0]
        m[y0:y1, x0:x1] = 1
        np.save(masks / f"{image_id}.npy", m)
    np.save(masks / "img_0002.npy", np.ones((80, 32), dtype=np.uint8))  # image is 64x160
    with pytest.raises(InputError) as e:
        load_pib_data(imagenet_root, None, ALL, masks=masks)
    msg = _one_line(e)
    assert msg.startswith(str(masks / "img_0002.npy")) and "32x80 differs from the image's 64x160" in msg
    data = load_pib_data(imagenet_root, None, ALL, masks=masks, on_bad_annotation="skip")
    assert data.dropped == {"annotation size differs from image": ["img_0002"]}
    f = np.zeros((160, 64), dtype=np.float32)
    f[3, 3] = np.nan
    np.save(masks / "img_0002.npy", f)
    with pytest.raises(InputError, match="img_0002.npy: mask holds NaN or inf"):
        load_pib_data(imagenet_root, None, ALL, masks=masks)


def test_coco_masks_check_image_size_and_segmentation(imagenet_root):
    def polygons(d):
        for a in d["annotations"]:
            x, y, w, h = a["bbox"]
            a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        d["images"][0]["height"] = 45  # img_0001 is 120x90

    js = _coco(imagenet_root, polygons)
    with pytest.raises(InputError, match=r"coco.json \(image img_0001.JPEG\): annotation size 120x45 differs"):
        load_pib_data(imagenet_root, None, ALL, masks=js)
    data = load_pib_data(imagenet_root, None, ALL, masks=js, on_bad_annotation="skip")
    assert data.dropped == {"annotation size differs from image": ["img_0001"]}
    d = json.loads(js.read_text())
    d["annotations"][1]["segmentation"] = {"counts": "!!", "size": "x"}  # an RLE pycocotools cannot read
    js.write_text(json.dumps(d))
    data = load_pib_data(imagenet_root, None, ALL, masks=js, on_bad_annotation="skip")
    with pytest.raises(InputError, match=r"coco.json: annotation id 2 \(img_0002.JPEG\) has an unreadable segm"):
        data.masks.mask("img_0002", (64, 160))


def test_annotation_problem_does_not_touch_good_annotations():
    from lastvit_eval.data.filters import annotation_problem

    assert annotation_problem(Annotation([Box(0, 0, 120, 90)], size=(120, 90)), (120, 90)) is None
    assert annotation_problem(Annotation([Box(0.5, 0.5, 1, 1)]), (1, 1)) is None


def test_unreadable_box_subfolder_is_an_error(imagenet_root, deny_unreadable):
    """Without this, its images would read as 'no annotation'."""
    sub = imagenet_root / "bbox" / "n1"
    sub.mkdir()
    (imagenet_root / "bbox" / "img_0001.xml").rename(sub / "img_0001.xml")
    assert len(load_boxes(imagenet_root / "bbox")) == 8
    sub.chmod(0)
    try:
        with pytest.raises(InputError) as e:
            load_boxes(imagenet_root / "bbox")
        assert _one_line(e).startswith(f"{sub}: cannot list folder")
    finally:
        sub.chmod(stat.S_IRWXU)
