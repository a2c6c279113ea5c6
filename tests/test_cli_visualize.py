"""visualize writes PNGs of the expected size for chosen and sampled images."""

from __future__ import annotations

from PIL import Image
from typer.testing import CliRunner

from lastvit_eval.app import app
from lastvit_eval.report.plots import grid_pixels


def test_visualize_chosen_images(imagenet_root, detectron2_ckpt, tmp_path):
    out = tmp_path / "viz"
    r = CliRunner().invoke(app, ["visualize", "-c", str(detectron2_ckpt), "-r", str(imagenet_root), "-o", str(out),
                                 "--image", "img_0001", "--image", "img_0007", "--no-progress"])
    assert r.exit_code == 0, r.output
    for name in ("heatmaps.png", "score_distribution.png", "votes.png"):
        with Image.open(out / name) as im:
            im.load()
            if name != "score_distribution.png":
                assert im.size == grid_pixels(2)


def test_visualize_unknown_image_is_input_error(imagenet_root, detectron2_ckpt, tmp_path):
    r = CliRunner().invoke(app, ["visualize", "-c", str(detectron2_ckpt), "-r", str(imagenet_root), "-o",
                                 str(tmp_path / "v"), "--image", "nope", "--pooling", "cls", "--no-progress"])
    assert r.exit_code == 2 and "nope" in r.output + (r.stderr or "")
