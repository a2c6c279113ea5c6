"""patch-hit end to end through Typer's CliRunner on real files."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from lastvit_eval.app import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_patch_hit_end_to_end(imagenet_root, detectron2_ckpt, tmp_path):
    out = tmp_path / "run"
    r = run("patch-hit", "--checkpoint", detectron2_ckpt, "--imagenet-root", imagenet_root, "--output-dir", out,
            "--pooling", "last", "--workers", 0, "--batch-size", 3, "--no-progress")
    assert r.exit_code == 0, r.output
    out = out / "last-k1"
    rec = json.loads((out / "metrics.json").read_text())
    info = rec["info"]["patch-hit"]
    # 8 images: one with two objects, one with a large box, one whose box misses the crop
    assert info["found"] == 8
    assert info["dropped"] == {"not exactly one object": 1, "box area >= 25% of image": 1, "box outside the crop": 1}
    assert info["evaluated"] == 5
    m = rec["metrics"]["patch_hit.top1"]
    assert m["n"] == 5 and m["ci_low"] <= m["value"] <= m["ci_high"]
    rows = pd.read_csv(out / "patch_hit_rows.csv")
    assert len(rows) == 5 and set(rows.columns) >= {"image_id", "top_patch", "top1", "top5", "score"}
    assert rows["top1"].mean() * 100 == pytest.approx(m["value"])
    prov = rec["provenance"]
    assert prov["model"]["sha256"] and prov["transform"]["crop"] == 32 and prov["pooling"]["name"] == "last-k1"
    assert (out / "table.csv").exists() and (out / "table.md").read_text().startswith("| run |")


def _err(r):
    return r.output + (r.stderr if hasattr(r, "stderr") and r.stderr else "")


@pytest.mark.parametrize("source", ["bbox", "LOC_val_solution.csv", "coco.json"])
def test_every_box_source_gives_the_same_rows(imagenet_root, detectron2_ckpt, tmp_path, source):
    out = tmp_path / source
    r = run("patch-hit", "-c", detectron2_ckpt, "-r", imagenet_root, "--boxes", imagenet_root / source, "-o", out,
            "--pooling", "cls", "--workers", 0, "--no-progress")
    assert r.exit_code == 0, r.output
    rows = pd.read_csv(out / "cls" / "patch_hit_rows.csv")
    base = tmp_path / "base"
    if not base.exists():
        assert run("patch-hit", "-c", detectron2_ckpt, "-r", imagenet_root, "-o", base, "--pooling", "cls",
                   "--workers", 0, "--no-progress").exit_code == 0
    pd.testing.assert_frame_equal(rows, pd.read_csv(base / "cls" / "patch_hit_rows.csv"))


def test_bf16_runs_and_records_dtype(imagenet_root, detectron2_ckpt, tmp_path):
    out = tmp_path / "bf16"
    r = run("patch-hit", "-c", detectron2_ckpt, "-r", imagenet_root, "-o", out, "--dtype", "bf16", "--workers", 0,
            "--no-progress", "--any-objects", "--max-box-area", 1)
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "last-k1" / "metrics.json").read_text())
    assert rec["provenance"]["dtype"] == "bf16" and rec["info"]["patch-hit"]["evaluated"] == 7


def test_corrupt_jpeg_skip_and_fail(imagenet_root, detectron2_ckpt, tmp_path):
    victim = next((imagenet_root / "val").rglob("img_0007.JPEG"))
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # truncated: header fine, decode fails
    out = tmp_path / "skip"
    r = run("patch-hit", "-c", detectron2_ckpt, "-r", imagenet_root, "-o", out, "--workers", 0, "--no-progress")
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "last-k1" / "metrics.json").read_text())
    info = rec["info"]["patch-hit"]
    assert info["evaluated"] == 4 and info["dropped"]["unreadable image"] == 1
    assert info["extraction"]["test"]["skipped"] == [str(victim)]
    r = runner.invoke(app, ["patch-hit", "-c", str(detectron2_ckpt), "-r", str(imagenet_root), "-o",
                            str(tmp_path / "fail"), "--workers", "0", "--no-progress", "--on-bad-image", "fail"])
    assert r.exit_code == 2 and "img_0007.JPEG: unreadable image" in _err(r)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda root, ck: (root / "missing", ck), "dataset root does not exist"),
        (lambda root, ck: (root, ck.parent / "nope.pth"), "checkpoint file not found"),
        (lambda root, ck: (_drop_boxes(root), ck), "no boxes found"),
        (lambda root, ck: (_bad_xml(root), ck), "img_0001.xml: malformed XML"),
        (lambda root, ck: (root, _garbage(ck)), "not a readable PyTorch checkpoint"),
    ],
)
def test_bad_input_exits_2_with_one_line(imagenet_root, detectron2_ckpt, tmp_path, mutate, message):
    root, ck = mutate(imagenet_root, detectron2_ckpt)
    r = runner.invoke(app, ["patch-hit", "-c", str(ck), "-r", str(root), "-o", str(tmp_path / "o"), "--workers", "0",
                            "--no-progress"])
    assert r.exit_code == 2, r.output
    err = _err(r)
    assert message in err and "Traceback" not in err
    assert not list((tmp_path / "o").rglob("metrics.json"))


def test_all_filtered_out(imagenet_root, detectron2_ckpt, tmp_path):
    r = runner.invoke(app, ["patch-hit", "-c", str(detectron2_ckpt), "-r", str(imagenet_root), "--max-box-area",
                            "0.0001", "-o", str(tmp_path / "o"), "--no-progress"])
    assert r.exit_code == 2 and "all 8 images were filtered out" in _err(r)


def _drop_boxes(root):
    import shutil

    shutil.rmtree(root / "bbox")
    (root / "LOC_val_solution.csv").unlink()
    (root / "coco.json").rename(root / "other.json")
    return root


def _bad_xml(root):
    (root / "bbox" / "img_0001.xml").write_text("<annotation><size>")
    return root


def _garbage(ck):
    ck.write_bytes(b"\x00" * 100)
    return ck


def test_version_and_help():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("lastvit-eval ")
    r = runner.invoke(app, ["patch-hit", "--help"])
    assert r.exit_code == 0 and "--imagenet-root" in r.output
