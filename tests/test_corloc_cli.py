"""`corloc --method lost | dino-seg` end to end on a tiny DINO checkpoint, over a VOC devkit and a COCO subset made
here, against a reference built in the test: timm's own `dynamic_img_size=True` model on the image as LOST feeds
it (ToTensor + Normalize, zero-padded to the patch), keys from a hook on the last `attn.qkv` (LOST's
`main_lost.py`), CLS attention softmax(q k^T * scale), the boxes from the transcriptions of
`test_corloc_methods.py`, IoU by counting pixels of masks, ground truth read from the XML / json here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lxml import etree
from PIL import Image
from test_corloc_methods import dino_seg_transcribed, lost_transcribed
from test_voc_data import write_xml
from timm.models.vision_transformer import VisionTransformer
from tiny_models import tiny_timm
from torchvision import transforms
from typer.testing import CliRunner

from lastvit_eval.app import app

runner = CliRunner()
PATCH, HEADS, HEAD = 8, 3, 1
# (id, (w, h), objects (name, xmin, ymin, xmax, ymax, difficult, truncated), 1-based inclusive as VOC writes them)
VOC = [("000005", (61, 47), [("cat", 17, 13, 48, 36, 0, 0)]),
       ("000007", (40, 60), [("dog", 9, 21, 32, 44, 0, 1), ("dog", 1, 1, 6, 6, 1, 0)]),
       ("000009", (48, 48), [("car", 1, 1, 48, 48, 1, 1)]),
       ("000012", (75, 33), [("bird", 40, 5, 70, 33, 0, 0)])]
# COCO: (id, (w, h), [(x, y, w, h, iscrowd)]); ids 2 and 4 form the list
COCO = [(1, (50, 40), [(3.4, 5.5, 20.2, 18.6, 0)]),
        (2, (64, 30), [(10.5, 2.5, 40.0, 25.0, 0), (0, 0, 64, 30, 1)]),
        (3, (33, 70), [(1, 1, 30, 30, 0)]),
        (4, (45, 45), [(0.2, 0.7, 44.1, 44.0, 0), (30.0, 30.0, 10.0, 10.0, 0)])]


def _image(path: Path, size, boxes, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(20, 90, (h, w, 3), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        arr[int(y0):int(y1), int(x0):int(x1)] = (210, 70, 40)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "dino_tiny.pth"
    torch.save(tiny_timm(seed=3).state_dict(), path)
    return path


@pytest.fixture
def devkit(tmp_path: Path) -> Path:
    base = tmp_path / "VOCdevkit" / "VOC2007"
    for n, (image_id, size, objects) in enumerate(VOC):
        _image(base / "JPEGImages" / f"{image_id}.jpg", size, [(o[1] - 1, o[2] - 1, o[3], o[4]) for o in objects], n)
        write_xml(base / "Annotations" / f"{image_id}.xml", image_id, size, objects)
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i, _, _ in VOC))
    return tmp_path


@pytest.fixture
def coco(tmp_path: Path) -> dict:
    root = tmp_path / "coco" / "train2014"
    doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for image_id, (w, h), anns in COCO:
        name = f"COCO_train2014_{image_id:012d}.jpg"
        _image(root / name, (w, h), [(x, y, x + bw, y + bh) for x, y, bw, bh, crowd in anns if not crowd], image_id)
        doc["images"].append({"id": image_id, "file_name": name, "width": w, "height": h})
        for x, y, bw, bh, crowd in anns:
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                                       "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": crowd})
    ann = tmp_path / "coco" / "instances_train2014.json"
    ann.write_text(json.dumps(doc))
    listing = tmp_path / "coco" / "coco_20k_filenames.txt"
    listing.write_text("train2014/COCO_train2014_000000000002.jpg\ntrain2014/COCO_train2014_000000000004.jpg\n")
    return {"root": root, "ann": ann, "list": listing}


def reference_taps(ckpt: Path, path: Path, registers: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Patch keys [P, D] (rounded to fp16 as the tap stores them) and CLS attention [H, P], LOST's way; with
    registers (timm's reg_tokens, after CLS), their rows and columns are dropped with the CLS token's."""
    m = VisionTransformer(img_size=32, patch_size=PATCH, embed_dim=192, depth=2, num_heads=HEADS, num_classes=0,
                          dynamic_img_size=True, reg_tokens=registers, no_embed_class=registers > 0)
    m.load_state_dict(torch.load(ckpt, weights_only=True))
    m.eval()
    img = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406),
                                                                          (0.229, 0.224, 0.225))])(
        Image.open(path).convert("RGB"))
    h, w = img.shape[1:]
    padded = torch.zeros(3, math.ceil(h / PATCH) * PATCH, math.ceil(w / PATCH) * PATCH)
    padded[:, :h, :w] = img
    out = {}
    hook = m.blocks[-1].attn.qkv.register_forward_hook(lambda mod, i, o: out.__setitem__("qkv", o))
    with torch.no_grad():
        m.forward_features(padded[None])
    hook.remove()
    n = out["qkv"].shape[1]
    q, k, _ = out["qkv"].reshape(1, n, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
    first = 1 + registers  # CLS, then the registers, then the patches
    keys = k.transpose(1, 2).reshape(1, n, -1)[0, first:]
    attn = torch.softmax(q @ k.transpose(-2, -1) * (192 // HEADS) ** -0.5, dim=-1)[0, :, 0, first:]
    grid = (padded.shape[1] // PATCH, padded.shape[2] // PATCH)
    return keys.half().double().numpy(), attn.double().numpy(), grid


def pixel_iou(a, b) -> float:
    """IoU by counting unit pixels of two integer boxes on a canvas holding both."""
    size = int(max(a[2], a[3], b[2], b[3])) + 1
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    ma = (xs > a[0]) & (xs < a[2]) & (ys > a[1]) & (ys < a[3])
    mb = (xs > b[0]) & (xs < b[2]) & (ys > b[1]) & (ys < b[3])
    return float((ma & mb).sum() / max((ma | mb).sum(), 1))


def voc_truth(devkit: Path, image_id: str) -> list[tuple]:
    xml = etree.parse(str(devkit / "VOCdevkit" / "VOC2007" / "Annotations" / f"{image_id}.xml"))
    return [tuple(float(o.findtext(f"bndbox/{t}")) - (1 if t in ("xmin", "ymin") else 0)
                  for t in ("xmin", "ymin", "xmax", "ymax")) for o in xml.iter("object")]  # difficult/truncated too


def coco_truth(image_id: int) -> list[tuple]:
    anns = next(a for i, _, a in COCO if i == image_id)
    return [tuple(float(round(v)) for v in (x, y, x + w, y + h)) for x, y, w, h, crowd in anns if not crowd]


def check_run(out: Path, ckpt: Path, method: str, images: dict[str, tuple[Path, list]], registers: int = 0) -> None:
    rec = json.loads((out / "last-k1" / "metrics.json").read_text())
    rows = pd.read_csv(out / "last-k1" / "corloc_rows.csv", dtype={"image_id": str})
    assert list(rows.columns)[:7] == ["image_id", "x0", "y0", "x1", "y1", "iou", "hit"]
    assert sorted(rows["image_id"]) == sorted(images)
    assert rec["provenance"]["transform"]["kind"] == "full-padded"
    hits = []
    for image_id, (path, truth) in images.items():
        keys, attn, grid = reference_taps(ckpt, path, registers)
        w, h = Image.open(path).size
        if method == "lost":
            box = lost_transcribed(torch.tensor(keys), grid, PATCH, (h, w), 100)
        else:
            box = dino_seg_transcribed(torch.tensor(attn), grid, PATCH, HEAD)
        row = rows[rows["image_id"] == image_id].iloc[0]
        assert row[["x0", "y0", "x1", "y1"]].to_numpy(float).tolist() == pytest.approx(box), image_id
        ious = [pixel_iou(box, g) for g in truth]
        assert row["iou"] == pytest.approx(max(ious), abs=1e-6)
        assert bool(row["hit"]) == (max(ious) >= 0.5)
        hits.append(max(ious) >= 0.5)
    assert rec["metrics"]["corloc.hit"]["value"] == pytest.approx(100 * np.mean(hits))
    assert rec["metrics"]["corloc.hit"]["unit"] == "percent" and rec["metrics"]["corloc.hit"]["direction"] == "higher"
    assert rec["metrics"]["corloc.mean_iou"]["unit"] == "ratio"


@pytest.mark.parametrize("method", ["lost", "dino-seg"])
def test_corloc_on_voc_matches_the_reference(devkit, ckpt, tmp_path, method):
    out = tmp_path / "out"
    r = runner.invoke(app, ["corloc", "-c", str(ckpt), "--voc-root", str(devkit), "--year", "2007", "--method",
                            method, "--dinoseg-head", str(HEAD), "-o", str(out), "--workers", "0", "--no-progress",
                            "--cache-dir", str(tmp_path / "store")])
    assert r.exit_code == 0, r.output
    base = devkit / "VOCdevkit" / "VOC2007"
    check_run(out, ckpt, method, {i: (base / "JPEGImages" / f"{i}.jpg", voc_truth(devkit, i)) for i, _, _ in VOC})
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.npy"))  # ragged: not stored


@pytest.mark.parametrize("method", ["lost", "dino-seg"])
def test_corloc_on_a_coco_subset_matches_the_reference(coco, ckpt, tmp_path, method):
    out = tmp_path / "out"
    r = runner.invoke(app, ["corloc", "-c", str(ckpt), "--coco-root", str(coco["root"]), "--coco-annotations",
                            str(coco["ann"]), "--image-list", str(coco["list"]), "--method", method,
                            "--dinoseg-head", str(HEAD), "-o", str(out), "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    images = {str(i): (coco["root"] / f"COCO_train2014_{i:012d}.jpg", coco_truth(i)) for i in (2, 4)}
    check_run(out, ckpt, method, images)
    listed = json.loads((out / "last-k1" / "metrics.json").read_text())["provenance"]["dataset"]["image_list"]
    assert listed["source"] == str(coco["list"]) and listed["images"] == 2 and listed["coco20k"] is False


@pytest.mark.parametrize("method", ["lost", "dino-seg"])
def test_registers_are_dropped_like_the_class_token(devkit, tmp_path, method):
    """A timm ViT with 4 register tokens: the boxes are LOST's / DINO-seg's on the patch tokens alone."""
    torch.manual_seed(5)
    reg = VisionTransformer(img_size=32, patch_size=PATCH, embed_dim=192, depth=2, num_heads=HEADS, num_classes=0,
                            reg_tokens=4, no_embed_class=True)
    with torch.no_grad():
        for name, p in reg.named_parameters():
            if "norm" in name or "reg_token" in name or "cls_token" in name:
                p.add_(torch.randn_like(p) * 0.5)
    ckpt = tmp_path / "dino_reg4.pth"
    torch.save(reg.state_dict(), ckpt)
    out = tmp_path / "out"
    r = runner.invoke(app, ["corloc", "-c", str(ckpt), "--voc-root", str(devkit), "--year", "2007", "--method",
                            method, "--dinoseg-head", str(HEAD), "-o", str(out), "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    base = devkit / "VOCdevkit" / "VOC2007"
    check_run(out, ckpt, method, {i: (base / "JPEGImages" / f"{i}.jpg", voc_truth(devkit, i)) for i, _, _ in VOC},
              registers=4)
    # the registers do change the tokens: a reference that kept them as patches would see 4 more columns
    keys, attn, grid = reference_taps(ckpt, base / "JPEGImages" / "000005.jpg", 4)
    assert keys.shape[0] == attn.shape[1] == grid[0] * grid[1]


def test_last_votes_on_a_coco_subset_matches_a_recomputation(coco, ckpt, tmp_path):
    """`--method last-votes` on COCO: the vote-map box re-derived here from the stored votes (components by
    breadth-first search, the one with the most votes, mapped back through Resize + CenterCrop), IoU by pixel
    masks against the json's non-crowd boxes."""
    from test_discovery_cli import _pixel_iou, _votes_box

    from lastvit_eval.engine.device import EngineSpec
    from lastvit_eval.engine.extract import extract
    from lastvit_eval.engine.taps import TapRequest
    from lastvit_eval.models import load_model
    from lastvit_eval.pooling import PoolingSpec

    out = tmp_path / "out"
    r = runner.invoke(app, ["corloc", "-c", str(ckpt), "--coco-root", str(coco["root"]), "--coco-annotations",
                            str(coco["ann"]), "--image-list", str(coco["list"]), "--method", "last-votes",
                            "-o", str(out), "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "last-k1" / "metrics.json").read_text())
    rows = pd.read_csv(out / "last-k1" / "corloc_rows.csv", dtype={"image_id": str})
    assert list(rows.columns)[:7] == ["image_id", "x0", "y0", "x1", "y1", "iou", "hit"]
    assert sorted(rows["image_id"]) == ["2", "4"]
    model = load_model(ckpt)
    t, g, p = model.transform, model.arch.grid, model.arch.patch_size
    assert t.kind == "resize-crop" and rec["provenance"]["transform"].get("kind") != "full-padded"
    paths = [coco["root"] / f"COCO_train2014_{i:012d}.jpg" for i in (2, 4)]
    feats = extract(model, paths, TapRequest((PoolingSpec("last"),), frozenset({"votes"})),
                    EngineSpec(device="cpu", workers=0), progress=False)
    hits, boxes = [], 0
    for n, image_id in enumerate((2, 4)):
        w, h = Image.open(paths[n]).size
        v = feats.arrays["votes/last-k1"][n].reshape(g).astype(np.float64)
        box = _votes_box(v, g, p, t, w, h)
        row = rows[rows["image_id"] == str(image_id)].iloc[0]
        if box is None:
            assert row["status"] == "no_box" and not row["hit"]
            hits.append(False)
            continue
        boxes += 1
        np.testing.assert_allclose(row[["x0", "y0", "x1", "y1"]].to_numpy(float), box, atol=1e-3)
        ious = [_pixel_iou(box, gt, (w, h)) for gt in coco_truth(image_id)]
        assert row["iou"] == pytest.approx(max(ious), abs=0.02)
        if abs(max(ious) - 0.5) > 0.02:
            assert bool(row["hit"]) == (max(ious) >= 0.5)
        hits.append(bool(row["hit"]))
    assert boxes > 0  # a box was found and scored, not only no_box rows
    assert rec["metrics"]["corloc.hit"]["value"] == pytest.approx(100 * np.mean(hits))
    assert rec["info"]["corloc"]["method"] == "last-votes"



def test_full_resolution_tokens_equal_timms_dynamic_model(ckpt, devkit):
    """The switched backbone (engine/full_res.py) gives timm's own dynamic_img_size forward, bit for bit."""
    from lastvit_eval.engine.full_res import full_resolution
    from lastvit_eval.models import load_model

    model = full_resolution(load_model(ckpt))
    ref = VisionTransformer(img_size=32, patch_size=PATCH, embed_dim=192, depth=2, num_heads=HEADS, num_classes=0,
                            dynamic_img_size=True)
    ref.load_state_dict(torch.load(ckpt, weights_only=True))
    ref.eval()
    path = devkit / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000005.jpg"
    x = model.transform.normalize(model.transform.pixels(Image.open(path).convert("RGB"))[None])
    assert tuple(x.shape[-2:]) == (48, 64)  # 47 x 61 padded to the patch
    assert float(x[..., 47:, :].abs().max()) == 0.0 and float(x[..., :, 61:].abs().max()) == 0.0
    with torch.no_grad():
        assert torch.equal(model.backbone.tokens(x), ref.forward_features(x))


def test_bad_inputs_exit_2_before_any_forward(devkit, coco, ckpt, tmp_path, forwarded):
    import timm

    torch.manual_seed(1)  # a timm-family EVA02 (named by its pretrained_cfg): rotary tables, no full resolution
    other = tmp_path / "timm_eva.pth"
    torch.save({"state_dict": timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=0,
                                                img_size=28).state_dict(),
                "pretrained_cfg": {"architecture": "eva02_tiny_patch14_224"}}, other)
    bad_list = tmp_path / "bad_list.txt"
    bad_list.write_text("train2014/COCO_train2014_000000000099.jpg\n")
    missing = tmp_path / "coco_missing"
    missing.mkdir()
    Image.open(coco["root"] / "COCO_train2014_000000000004.jpg").resize((20, 20)).save(
        missing / "COCO_train2014_000000000004.jpg")
    small_list = tmp_path / "only4.txt"
    small_list.write_text("4\n")
    voc = ["--voc-root", str(devkit), "--year", "2007"]
    cc = ["--coco-annotations", str(coco["ann"])]
    cases = [
        ([*voc, "--method", "dino-seg"], "--dinoseg-head 4: dino_tiny.pth has 3 heads"),
        ([*voc, "--method", "nope"], "--method 'nope'"),
        ([*voc, "--method", "lost", "--resolution", "huge"], "--resolution 'huge'"),
        ([*voc, "--method", "lost", "--k-patches", "0"], "--k-patches 0"),
        (["--coco-root", str(coco["root"]), *cc, "--image-list", str(bad_list)], "not in this file"),
        (["--coco-root", str(coco["root"]), "--image-list", str(coco["list"])], "--coco-annotations"),
        (["--coco-root", str(tmp_path / "nowhere"), *cc], "COCO image folder does not exist"),
        (["--coco-root", str(missing), *cc, "--image-list", str(coco["list"])], "not found under --coco-root"),
        (["--coco-root", str(missing), *cc, "--image-list", str(small_list)], "image is 20x20"),
        (["--coco-root", str(coco["root"]), *cc, *voc], "without --voc-root"),
    ]
    for args, msg in cases:
        r = runner.invoke(app, ["corloc", "-c", str(ckpt), *args, "--method", "lost", "-o", str(tmp_path / "o"),
                                "--no-progress"] if "--method" not in args else
                          ["corloc", "-c", str(ckpt), *args, "-o", str(tmp_path / "o"), "--no-progress"])
        assert r.exit_code == 2 and msg in r.output, (args, r.output)
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    r = runner.invoke(app, ["corloc", "-c", str(ckpt), *voc, "--method", "lost", "--image-size", "48", "-o",
                            str(tmp_path / "o")])  # lost defaults to full resolution
    assert r.exit_code == 2 and "drop --image-size 48" in r.output and "--resolution model" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    r = runner.invoke(app, ["corloc", "-c", str(other), *voc, "--method", "dino-seg", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--resolution full needs a DINO, torchvision or OpenCLIP ViT" in r.output, r.output
    assert "its family is timm" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    seg = devkit / "VOCdevkit" / "VOC2007" / "ImageSets" / "Segmentation"
    seg.mkdir()
    (seg / "val.txt").write_text("000005\n")
    r = runner.invoke(app, ["run", "-e", "corloc,coarse-seg", "-c", str(ckpt), *voc, "--method", "lost",
                            "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "run it alone" in r.output, r.output
    assert forwarded == []


@pytest.mark.parametrize("name,padded", [("vit_tiny_patch16_224", (48, 64)),
                                         ("vit_small_patch14_reg4_dinov2", (56, 70))])
def test_full_resolution_timm_family_equals_timms_dynamic_model(devkit, tmp_path, name, padded):  # noqa: F811
    """A timm-family ViT file (plain, or DINOv2-style with 4 registers) at full resolution is timm's own
    dynamic_img_size forward on the padded image, as for DINO files."""
    import timm

    from lastvit_eval.engine.full_res import full_resolution
    from lastvit_eval.models import load_model

    torch.manual_seed(3)
    kw = dict(pretrained=False, num_classes=0, img_size=padded[0] // 2 if "14" in name else 32)
    src = timm.create_model(name, **kw).eval()
    path = tmp_path / "timm_vit.pth"
    torch.save({"state_dict": src.state_dict(), "pretrained_cfg": {"architecture": name}}, path)
    model = full_resolution(load_model(path))
    ref = timm.create_model(name, dynamic_img_size=True, **kw).eval()
    ref.load_state_dict(src.state_dict())
    img = devkit / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000005.jpg"
    x = model.transform.normalize(model.transform.pixels(Image.open(img).convert("RGB"))[None])
    assert tuple(x.shape[-2:]) == padded  # 47 x 61 padded to the patch
    with torch.no_grad():
        assert (model.backbone.tokens(x) - ref.forward_features(x)).abs().max() < 1e-5
