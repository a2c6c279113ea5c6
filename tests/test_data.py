"""Box sources agree, labels resolve, filters report, and malformed files are named."""

from __future__ import annotations

import shutil

import pytest

from lastvit_eval.data.boxes import find_boxes, load_boxes
from lastvit_eval.data.filters import FilterSpec, apply_filter
from lastvit_eval.data.images import index_images
from lastvit_eval.data.labels import resolve_labels
from lastvit_eval.errors import InputError

from .conftest import IMAGES


def _as_tuples(anns):
    return {k: [(b.x0, b.y0, b.x1, b.y1, b.name) for b in a.boxes] for k, a in anns.items()}


def test_voc_csv_coco_give_the_same_boxes(imagenet_root):
    voc = _as_tuples(load_boxes(imagenet_root / "bbox"))
    csv = _as_tuples(load_boxes(imagenet_root / "LOC_val_solution.csv"))
    coco = _as_tuples(load_boxes(imagenet_root / "coco.json"))
    expected = {i: [(*map(float, b), wnid) for b in boxes] for i, wnid, _, boxes in IMAGES}
    assert voc == csv == coco == expected
    assert find_boxes(imagenet_root) == imagenet_root / "bbox"


def test_index_is_sorted_and_labels_follow_sorted_wnids(imagenet_root):
    recs = index_images(imagenet_root)
    assert [r.image_id for r in recs] == sorted(i for i, *_ in IMAGES)
    labels = resolve_labels(imagenet_root, recs, None)
    assert labels.classes == sorted({w for _, w, _, _ in IMAGES})
    assert [labels.classes[lab] for lab in labels.labels] == [r.wnid for r in recs]


def test_flat_layout_with_meta_val_txt(imagenet_root):
    flat = imagenet_root.parent / "flat"
    (flat / "val").mkdir(parents=True)
    for p in (imagenet_root / "val").rglob("*.JPEG"):
        shutil.copy(p, flat / "val" / p.name)
    (flat / "meta").mkdir()
    (flat / "meta" / "val.txt").write_text("".join(f"{i}.JPEG {n % 3}\n" for n, (i, *_) in enumerate(IMAGES)))
    recs = index_images(flat)
    assert all(r.wnid is None for r in recs)
    labels = resolve_labels(flat, recs, None)
    assert labels.labels == [n % 3 for n in range(len(IMAGES))]
    (flat / "meta" / "val.txt").write_text("img_0001.JPEG notanumber\n")
    with pytest.raises(InputError, match=r"val.txt:1"):
        resolve_labels(flat, recs, None)


def test_filter_reports_each_reason(imagenet_root):
    anns = load_boxes(imagenet_root / "bbox")
    ids = [i for i, *_ in IMAGES]
    sizes = [s for _, _, s, _ in IMAGES]
    kept, dropped = apply_filter(ids, anns, sizes, FilterSpec())
    assert dropped == {"not exactly one object": ["img_0004"], "box area >= 25% of image": ["img_0005"]}
    assert len(kept) == 6
    kept_all, dropped_none = apply_filter(ids, anns, sizes, FilterSpec(single_object=False, max_box_area=None))
    assert len(kept_all) == 8 and not dropped_none


def test_malformed_inputs_name_the_file(imagenet_root):
    bad = imagenet_root / "bbox" / "img_0002.xml"
    bad.write_text("<annotation><object><bndbox><xmin>1</xmin>")
    with pytest.raises(InputError, match=r"img_0002.xml: malformed XML"):
        load_boxes(imagenet_root / "bbox")
    bad.write_text("<annotation><object><name>x</name><bndbox><xmin>a</xmin><ymin>1</ymin><xmax>2</xmax>"
                   "<ymax>3</ymax></bndbox></object></annotation>")
    with pytest.raises(InputError, match=r"img_0002.xml: non-numeric"):
        load_boxes(imagenet_root / "bbox")
    csv = imagenet_root / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\nimg_0001,n1 1 2 3\n")
    with pytest.raises(InputError, match=r"LOC_val_solution.csv:2"):
        load_boxes(csv)
    js = imagenet_root / "coco.json"
    js.write_text("{not json")
    with pytest.raises(InputError, match="coco.json: malformed COCO json"):
        load_boxes(js)
    with pytest.raises(InputError, match="does not exist"):
        load_boxes(imagenet_root / "nope")


def test_missing_roots_and_empty_folders(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        index_images(tmp_path / "nothing")
    (tmp_path / "empty" / "val" / "n1").mkdir(parents=True)
    with pytest.raises(InputError, match="no images found"):
        index_images(tmp_path / "empty")
    with pytest.raises(InputError, match="no boxes found"):
        find_boxes(tmp_path / "empty")
