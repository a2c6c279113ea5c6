"""`lastvit-eval artifacts` end to end on the tiny ImageNet-style fixture, and its refusals before any forward."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from conftest import tiny_vit
from PIL import Image
from test_discovery_cli import ckpt, devkit  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from lastvit_eval.app import app

runner = CliRunner()


def _class_map(root: Path, tmp_path: Path) -> Path:
    cmap = tmp_path / "map.txt"  # the tiny 10-way head: say which output each wnid is
    cmap.write_text("".join(f"{w} {i + 3}\n" for i, w in enumerate(sorted(p.name for p in (root / "val").iterdir()))))
    return cmap


def _ok(r):
    assert r.exit_code == 0, r.output + (r.stderr or "")


def test_artifacts_writes_metrics_rows_and_pictures_and_unmasked_equals_classify(imagenet_root, detectron2_ckpt,
                                                                                 tmp_path, forwarded):
    out = tmp_path / "run"
    args = ["run", "-e", "artifacts,classify", "-c", str(detectron2_ckpt), "-r", str(imagenet_root), "-o", str(out),
            "-p", "cls", "-p", "last", "--class-map", str(_class_map(imagenet_root, tmp_path)), "--workers", "0",
            "--no-progress", "--norm-ratio", "1.2", "--blocks", "--mask-top", "0.25", "--mask-bottom", "0.5"]
    _ok(runner.invoke(app, args))
    assert sum(forwarded) == 8  # one engine pass over the 8 images (masked forwards happen inside it)
    for pooling in ("cls", "last-k1"):
        d = out / pooling
        rec = json.loads((d / "metrics.json").read_text())
        m = rec["metrics"]
        assert m["artifacts.outlier_share"]["unit"] == "percent" and m["artifacts.outlier_share"]["direction"] == "lower"
        assert m["artifacts.patch_norm"]["direction"] == "none" and m["artifacts.max_to_median"]["unit"] == "ratio"
        assert m["artifacts.outlier_cosine"]["unit"] == "cosine"
        assert m["artifacts.drop_top25.top1"]["direction"] == "higher"
        assert m["artifacts.drop_bottom50.delta_top1"]["direction"] == "none"
        assert "artifacts.outliers_in_object" in m and m["artifacts.outlier_share"]["value"] > 0
        # with nothing dropped the probe's reference is classify: same head, same class map, same images
        assert m["artifacts.unmasked.top1"]["value"] == m["classify.top1"]["value"]
        rows = pd.read_csv(d / "artifacts_rows.csv")
        cls_rows = pd.read_csv(d / "classify_rows.csv").set_index("image_id")
        assert len(rows) == 8
        assert list(rows["unmasked.top1"]) == list(cls_rows.loc[rows["image_id"], "top1"])
        for col in ("cls_norm", "patch_norm_median", "patch_norm_max", "outliers", "outlier_share",
                    "outlier_in_object_share", "object_area", "outlier_cosine", "block01.patch_median",
                    "drop_top25.top1", "drop_bottom50.top1"):
            assert col in rows, col
        assert len(pd.read_csv(d / "artifacts_blocks.csv")) == 2
        for png in ("artifacts_norms.png", "artifacts_outliers.png"):
            with Image.open(d / png) as im:
                assert im.format == "PNG" and im.size[0] > 300
        assert rec["info"]["artifacts"]["masking"]["dropped"] == {"drop_top25": 4, "drop_bottom50": 8}
        assert sorted(rec["info"]["artifacts"]["pictures"]) == ["artifacts_norms.png", "artifacts_outliers.png"]
    # the masked logits are in the feature store: the same command again forwards nothing
    forwarded.clear()
    _ok(runner.invoke(app, [*args, "--overwrite"]))
    assert forwarded == []


def test_artifacts_alias_without_probe_needs_no_labels_or_head(imagenet_root, tmp_path):
    m = tiny_vit(num_classes=None)
    nohead = tmp_path / "nohead.pth"
    torch.save({"model": {"model." + k: v for k, v in m.state_dict().items()}}, nohead)
    out = tmp_path / "a"
    _ok(runner.invoke(app, ["artifacts", "-c", str(nohead), "-r", str(imagenet_root), "-o", str(out), "-p", "gap",
                            "--norm-threshold", "25", "--workers", "0", "--no-progress"]))
    rec = json.loads((out / "gap" / "metrics.json").read_text())
    assert "artifacts.unmasked.top1" not in rec["metrics"]
    assert rec["info"]["artifacts"]["threshold"] == "absolute 25"


def test_bad_options_exit_2_before_any_forward(imagenet_root, detectron2_ckpt, tmp_path, forwarded):
    base = ["artifacts", "-c", str(detectron2_ckpt), "-r", str(imagenet_root), "-o", str(tmp_path / "o"),
            "--workers", "0", "--no-progress", "--class-map", str(_class_map(imagenet_root, tmp_path))]
    m = tiny_vit(num_classes=None)
    nohead = tmp_path / "nohead.pth"
    torch.save({"model": {"model." + k: v for k, v in m.state_dict().items()}}, nohead)
    cases = [
        (["--mask-top", "1.5"], "--mask-top 1.5"),
        (["--mask-bottom", "0"], "--mask-bottom"),
        (["--norm-ratio", "0.5"], "--norm-ratio"),
        (["-p", "last:k=4", "--mask-top", "0.9"], "fewer than the k=4"),  # 16 patches, 14 dropped
    ]
    for extra, msg in cases:
        r = runner.invoke(app, [*base, *extra])
        assert r.exit_code == 2 and msg in r.output, (extra, r.output)
    r = runner.invoke(app, ["artifacts", "-c", str(nohead), "-r", str(imagenet_root), "-o", str(tmp_path / "n"),
                            "--mask-top", "0.25", "--no-progress"])
    assert r.exit_code == 2 and "has none" in r.output and "classification head" in r.output, r.output
    assert len(r.output.strip().splitlines()) <= 2  # one line (maybe wrapped once)
    assert forwarded == []


def test_voc_segmentation_masks_give_the_object_area(devkit, ckpt, tmp_path):  # noqa: F811 (fixtures)
    """On a VOC devkit the object is the segmentation mask: a patch is inside when more than half its pixels
    are foreground (the mask through torchvision's own Resize NEAREST_EXACT + CenterCrop, counted here)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from lastvit_eval.data.voc import read_segmentation
    from lastvit_eval.models import load_model

    out = tmp_path / "voc"
    _ok(runner.invoke(app, ["artifacts", "-c", str(ckpt), "--voc-root", str(devkit), "-o", str(out), "-p", "cls",
                            "--workers", "0", "--no-progress", "--norm-ratio", "1.1"]))
    t = load_model(str(ckpt)).transform
    rows = pd.read_csv(out / "cls" / "artifacts_rows.csv").set_index("image_id")
    for image_id in rows.index:
        seg = read_segmentation(devkit / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{image_id}.png")
        m = TF.resize(torch.from_numpy(seg)[None], [t.resize], interpolation=InterpolationMode.NEAREST_EXACT)
        m = TF.center_crop(m, [t.crop])[0].numpy()
        fg = (m > 0) & (m < 255)
        g = t.crop // 8
        inside = fg.reshape(g, 8, g, 8).mean(axis=(1, 3)) > 0.5
        assert abs(rows.loc[image_id, "object_area"] - 100 * inside.mean()) < 1e-9
    rec = json.loads((out / "cls" / "metrics.json").read_text())
    assert rec["info"]["artifacts"]["annotations"] == "voc"


def test_npy_masks_give_the_object_area(imagenet_root, detectron2_ckpt, tmp_path):
    """--masks <folder of .npy>: the object is the mask (torchvision NEAREST_EXACT resize + crop, counted here);
    an image without a mask has no object columns."""
    import numpy as np
    from conftest import IMAGES
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from lastvit_eval.models import load_model

    folder = tmp_path / "masks"
    folder.mkdir()
    made = {}
    for image_id, _, (w, h), _ in IMAGES[:5]:
        m = np.zeros((h, w), dtype=bool)
        m[h // 4: h // 4 + h // 2, w // 3: w - 2] = True
        np.save(folder / f"{image_id}.npy", m)
        made[image_id] = m
    out = tmp_path / "m"
    _ok(runner.invoke(app, ["artifacts", "-c", str(detectron2_ckpt), "-r", str(imagenet_root), "-o", str(out),
                            "--masks", str(folder), "-p", "cls", "--workers", "0", "--no-progress"]))
    t = load_model(str(detectron2_ckpt)).transform
    rows = pd.read_csv(out / "cls" / "artifacts_rows.csv").set_index("image_id")
    g = t.crop // 8
    for image_id, m in made.items():
        c = TF.resize(torch.from_numpy(m.astype(np.uint8))[None], [t.resize],
                      interpolation=InterpolationMode.NEAREST_EXACT)
        c = TF.center_crop(c, [t.crop])[0].numpy().astype(bool)
        inside = c.reshape(g, 8, g, 8).mean(axis=(1, 3)) > 0.5
        assert abs(rows.loc[image_id, "object_area"] - 100 * inside.mean()) < 1e-9
    assert rows["object_area"].isna().sum() == len(IMAGES) - 5


def test_masking_probe_refuses_rotary_models_before_any_forward(imagenet_root, tmp_path, forwarded):
    """EVA02 feeds every block a rotary table for the whole grid: dropping patches would break its shapes
    mid-run, so --mask-top is one clear error at check time (the same model without the probe runs)."""
    import timm

    eva = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=10, img_size=56).eval()
    path = tmp_path / "eva.pth"
    torch.save({"state_dict": eva.state_dict(), "arch": "eva02_tiny_patch14_224"}, path)
    base = ["artifacts", "-c", str(path), "-r", str(imagenet_root), "--workers", "0", "--no-progress", "-p", "gap",
            "--class-map", str(_class_map(imagenet_root, tmp_path))]
    r = runner.invoke(app, [*base, "-o", str(tmp_path / "m"), "--mask-top", "0.25"])
    assert r.exit_code == 2, r.output
    assert "rotary position embedding" in r.output and "eva.pth" in r.output, r.output
    assert len(r.output.strip().splitlines()) <= 3  # one line (wrapped at most twice)
    assert forwarded == []
    r = runner.invoke(app, [*base, "-o", str(tmp_path / "ok")])
    assert r.exit_code == 0, r.output
    assert forwarded  # without the probe the same model is evaluated
