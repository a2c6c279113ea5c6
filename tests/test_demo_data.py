"""The bundled demo: generator determinism, exact boxes, the shipped folder's formats, the checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lxml import etree
from PIL import Image
from torchvision.models import VisionTransformer

from lastvit_eval.demo import make_data
from lastvit_eval.demo.synth import CLASSES, WNIDS, render

DEMO = Path(make_data.__file__).parent
DATA, CKPT = DEMO / "data", DEMO / "checkpoints"


def brute_force_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Edge box by scanning rows and columns one by one."""
    cols = [x for x in range(mask.shape[1]) if any(mask[y, x] for y in range(mask.shape[0]))]
    rows = [y for y in range(mask.shape[0]) if any(mask[y, x] for x in range(mask.shape[1]))]
    return cols[0], rows[0], cols[-1] + 1, rows[-1] + 1


def test_generator_is_deterministic() -> None:
    for stream, i in (("val", 0), ("train", 5), ("fit", 123)):
        a, b = render(0, stream, i), render(0, stream, i)
        np.testing.assert_array_equal(a.image, b.image)
        assert a.boxes == b.boxes and a.label == b.label
    assert not np.array_equal(render(0, "val", 0).image, render(1, "val", 0).image)


@pytest.mark.parametrize("index", range(0, 40, 3))
def test_boxes_are_tight_boxes_of_drawn_masks(index: int) -> None:
    s = render(0, "fit", index)
    assert 1 <= len(s.boxes) == len(s.masks) <= 2
    for mask, box in zip(s.masks, s.boxes, strict=True):
        assert mask.shape == s.image.shape[:2] and mask.any()
        assert box == brute_force_box(mask)
    if len(s.masks) == 2:
        assert not (s.masks[0] & s.masks[1]).any()


def test_layouts_give_the_paper_filter_something_to_drop() -> None:
    n_two = n_large = 0
    for i in range(120):
        s = render(0, "val", i)
        h, w, _ = s.image.shape
        n_two += len(s.boxes) == 2
        n_large += any((b[2] - b[0]) * (b[3] - b[1]) >= 0.25 * h * w for b in s.boxes)
    assert 3 <= n_two <= 40 and 2 <= n_large <= 40


def test_make_data_is_byte_identical(tmp_path: Path) -> None:
    small = {"val": 1, "train": 1}
    make_data.write_dataset(tmp_path / "a", per_class=small)
    make_data.write_dataset(tmp_path / "b", per_class=small)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 4 * len(CLASSES) + 3
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_shipped_classes_and_val_list() -> None:
    classes = [line.split("\t") for line in (DATA / "meta" / "classes.tsv").read_text().splitlines()]
    wnids = [c[1] for c in classes]
    assert [int(c[0]) for c in classes] == list(range(len(classes))) and wnids == sorted(wnids)
    assert 6 <= len(classes) <= 10
    lines = [line.split() for line in (DATA / "meta" / "val.txt").read_text().splitlines()]
    listed = {name: int(label) for name, label in lines}
    images = sorted((DATA / "val").glob("*/*.JPEG"))
    assert len(images) == len(listed) > 0
    for path in images:
        assert listed[path.name] == wnids.index(path.parent.name)
        assert (DATA / "bbox" / f"{path.stem}.xml").is_file()


def test_shipped_xml_matches_images() -> None:
    wnids = sorted(p.name for p in (DATA / "val").iterdir())
    for path in sorted((DATA / "val").glob("*/*.JPEG"))[::9]:
        root = etree.parse(str(DATA / "bbox" / f"{path.stem}.xml")).getroot()
        assert root.tag == "annotation" and root.findtext("filename") == path.stem
        w, h = Image.open(path).size
        assert (int(root.findtext("size/width")), int(root.findtext("size/height"))) == (w, h)
        objects = root.findall("object")
        assert objects
        for obj in objects:
            assert obj.findtext("name") == path.parent.name
            x0, y0, x1, y1 = (int(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax"))
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        # the shipped box is the generator's box for that image (val_<i> is render(0, "val", i - 1))
        index = int(path.stem.rsplit("_", 1)[1]) - 1
        sample = render(0, "val", index)
        assert WNIDS[sample.label] == path.parent.name and wnids.index(path.parent.name) == sample.label
        assert sample.boxes[0] == tuple(int(objects[0].findtext(f"bndbox/{t}"))
                                        for t in ("xmin", "ymin", "xmax", "ymax"))


@pytest.mark.parametrize("name", ["tiny_cls.pth", "tiny_last.pth"])
def test_shipped_checkpoint_loads_strictly(name: str) -> None:
    path = CKPT / name
    assert path.stat().st_size < 5_000_000
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    assert all(k.startswith("model.") for k in state)
    head = state["model.heads.head.weight"]
    model = VisionTransformer(image_size=112, patch_size=8, num_layers=6, num_heads=3, hidden_dim=192,
                              mlp_dim=384, num_classes=head.shape[0])
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()}, strict=True)
    assert head.shape[0] == len(CLASSES)
    with torch.no_grad():
        assert torch.isfinite(model(torch.zeros(1, 3, 112, 112))).all()
