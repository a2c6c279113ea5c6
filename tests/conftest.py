"""Fixtures that build real files: JPEGs of several sizes, VOC XML, LOC CSV, COCO json, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lxml import etree
from PIL import Image
from torchvision.models import VisionTransformer

import lastvit_eval.cli  # noqa: F401  (registers the commands)

# Test models are tiny: on small CPU boxes thread-pool wake-ups cost more than the arithmetic
# (a 2-block ViT forward took 0.3 s with 2 threads, 1 ms with one).
torch.set_num_threads(1)

# (image id, wnid, (w, h), boxes as (x0, y0, x1, y1)); sizes and aspect ratios vary on purpose
IMAGES = [
    ("img_0001", "n01440764", (120, 90), [(10, 12, 40, 50)]),
    ("img_0002", "n01440764", (64, 160), [(5, 60, 30, 100)]),
    ("img_0003", "n01443537", (200, 100), [(110, 20, 150, 60)]),
    ("img_0004", "n01443537", (96, 96), [(20, 20, 60, 60), (70, 70, 90, 90)]),  # two objects
    ("img_0005", "n01484850", (150, 120), [(0, 0, 140, 110)]),  # large box
    ("img_0006", "n01484850", (180, 60), [(2, 5, 20, 30)]),  # box outside the centre crop
    ("img_0007", "n01491361", (100, 140), [(30, 40, 70, 90)]),
    ("img_0008", "n01491361", (130, 110), [(60, 50, 95, 85)]),
]


def write_jpeg(path: Path, size: tuple[int, int], seed: int, box=None) -> None:
    rng = np.random.default_rng(seed)
    w, h = size
    arr = (rng.random((h, w, 3)) * 80 + 40).astype(np.uint8)
    if box is not None:
        x0, y0, x1, y1 = (int(v) for v in box)
        arr[y0:y1, x0:x1] = [220, 60, 30]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=90)


def write_voc_xml(path: Path, image_id: str, size, boxes, wnid: str) -> None:
    ann = etree.Element("annotation")
    etree.SubElement(ann, "filename").text = image_id
    s = etree.SubElement(ann, "size")
    for tag, v in (("width", size[0]), ("height", size[1]), ("depth", 3)):
        etree.SubElement(s, tag).text = str(v)
    for b in boxes:
        obj = etree.SubElement(ann, "object")
        etree.SubElement(obj, "name").text = wnid
        bb = etree.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), b, strict=True):
            etree.SubElement(bb, tag).text = str(v)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(etree.tostring(ann, pretty_print=True))


@pytest.fixture
def imagenet_root(tmp_path: Path) -> Path:
    """A tiny ImageNet: val/<wnid>/<id>.JPEG with per-image XML under bbox/, plus CSV and COCO files."""
    root = tmp_path / "imagenet"
    csv_lines = ["ImageId,PredictionString"]
    coco = {"images": [], "annotations": [], "categories": []}
    cats = sorted({wnid for _, wnid, _, _ in IMAGES})
    coco["categories"] = [{"id": i + 1, "name": c} for i, c in enumerate(cats)]
    for n, (image_id, wnid, size, boxes) in enumerate(IMAGES):
        write_jpeg(root / "val" / wnid / f"{image_id}.JPEG", size, seed=n, box=boxes[0])
        write_voc_xml(root / "bbox" / f"{image_id}.xml", image_id, size, boxes, wnid)
        csv_lines.append(f"{image_id}," + " ".join(f"{wnid} {' '.join(map(str, b))}" for b in boxes))
        coco["images"].append({"id": n + 1, "file_name": f"{image_id}.JPEG", "width": size[0], "height": size[1]})
        for b in boxes:
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": n + 1, "category_id": cats.index(wnid) + 1,
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1]), "iscrowd": 0,
            })
    (root / "LOC_val_solution.csv").write_text("\n".join(csv_lines) + "\n")
    (root / "coco.json").write_text(json.dumps(coco))
    return root


def write_train(root: Path, per_class: int) -> Path:
    """`per_class` train JPEGs (40-85 x 36 px) for each wnid of root/val: train/<wnid>/tr_<wnid>_<i>.JPEG."""
    for n, wnid in enumerate(sorted(p.name for p in (root / "val").iterdir())):
        for i in range(per_class):
            write_jpeg(root / "train" / wnid / f"tr_{wnid}_{i}.JPEG", (40 + 5 * i, 36), seed=100 * n + i)
    return root


@pytest.fixture
def with_train(imagenet_root: Path) -> Path:
    """imagenet_root with 6 train images per class."""
    return write_train(imagenet_root, 6)


def tiny_vit(num_classes: int | None = 10, seed: int = 0, image_size: int = 32, patch: int = 8,
             layers: int = 2) -> VisionTransformer:
    torch.manual_seed(seed)
    m = VisionTransformer(image_size=image_size, patch_size=patch, num_layers=layers, num_heads=3, hidden_dim=192,
                          mlp_dim=96, num_classes=num_classes or 1000)
    # random init leaves LayerNorms at identity and the head at zero: perturb so outputs are informative
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "ln" in name or "heads" in name:
                p.add_(torch.randn_like(p) * 0.1)
    if num_classes is None:
        m.heads = torch.nn.Sequential()
    return m.eval()


@pytest.fixture
def tiny_model() -> VisionTransformer:
    return tiny_vit()


@pytest.fixture
def detectron2_ckpt(tmp_path: Path, tiny_model: VisionTransformer) -> Path:
    path = tmp_path / "tiny_d2.pth"
    torch.save({"model": {"model." + k: v for k, v in tiny_model.state_dict().items()}, "iteration": 190000}, path)
    return path


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.gpu` tests need CUDA; on a CPU-only machine they are skipped, not failed."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test may read or fill the user's real feature cache."""
    monkeypatch.setenv("LASTVIT_EVAL_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def forwarded(monkeypatch) -> list[int]:
    """Images that went through the model, one entry per forward call (patches the forward the engine uses)."""
    import lastvit_eval.engine.extract as ex

    seen: list[int] = []
    real = ex.forward_taps

    def counting(model, x, *a, **k):
        seen.append(len(x))
        return real(model, x, *a, **k)

    monkeypatch.setattr(ex, "forward_taps", counting)
    return seen
