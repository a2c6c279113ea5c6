"""The few hostile-data cases that must hold through the CLI: exit 2 with one line, or a run that goes on."""

from __future__ import annotations

import json

from conftest import write_voc_xml
from PIL import Image
from typer.testing import CliRunner

from lastvit_eval.app import app

runner = CliRunner()


def _patch_hit(ckpt, root, out, *extra):
    return runner.invoke(app, ["patch-hit", "-c", str(ckpt), "-r", str(root), "-o", str(out), "--workers", "0",
                               "--no-progress", *extra])


def _err(r) -> str:
    return r.output + (r.stderr if getattr(r, "stderr", None) else "")


def test_pixel_limit_under_skip_goes_on(imagenet_root, detectron2_ckpt, tmp_path, monkeypatch):
    """Before: PIL's bomb *warning* escaped as an exception and ended the run even under skip."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 15000)  # img_0003 (20000 px) and img_0005 (18000 px)
    out = tmp_path / "skip"
    r = _patch_hit(detectron2_ckpt, imagenet_root, out)
    assert r.exit_code == 0, _err(r)
    info = json.loads((out / "last-k1" / "metrics.json").read_text())["info"]["patch-hit"]
    assert info["dropped"]["image over PIL's pixel limit"] == 2
    r = _patch_hit(detectron2_ckpt, imagenet_root, tmp_path / "fail", "--on-bad-image", "fail")
    err = _err(r)
    assert r.exit_code == 2 and "img_0003.JPEG: image over PIL's pixel limit" in err and "Traceback" not in err


def test_annotation_for_another_size_exits_2(imagenet_root, detectron2_ckpt, tmp_path):
    write_voc_xml(imagenet_root / "bbox" / "img_0001.xml", "img_0001", (60, 45), [(5, 6, 20, 25)], "n01440764")
    r = _patch_hit(detectron2_ckpt, imagenet_root, tmp_path / "o")
    err = _err(r)
    assert r.exit_code == 2, err
    assert "img_0001.xml: annotation size 60x45 differs from the image's 120x90" in err and "img_0001.JPEG" in err
    assert "Traceback" not in err and not list((tmp_path / "o").rglob("metrics.json"))
