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
