"""The demo end to end on the bundled data and checkpoints, gated against the committed baseline."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from lastvit_eval.app import app

BASELINE = Path(__file__).resolve().parents[1] / "results" / "demo" / "baseline.csv"


def test_demo_writes_everything_and_matches_the_baseline(tmp_path):
    runner = CliRunner()
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "-o", str(out), "--no-progress", "--workers", "0"])
    assert r.exit_code == 0, r.output + (r.stderr or "")
    assert "PiB top-1" in r.output
    for rel in ("report.csv", "report.md", "compare/compare.md", "tiny_cls/cls/metrics.json",
                "tiny_last/last-k1/patch_hit_rows.csv", "pictures/tiny_last/heatmaps.png"):
        assert (out / rel).exists(), rel
    with Image.open(out / "pictures" / "tiny_last" / "votes.png") as im:
        assert im.size[0] > 0
    long = pd.read_csv(out / "report.csv")
    assert set(long["checkpoint"]) == {"tiny_cls.pth", "tiny_last.pth"} and set(long["pooling"]) == {"cls", "last-k1"}
    # the committed baseline gate (also run by .ci/run): same numbers on this machine type
    r = runner.invoke(app, ["report", str(out), "-o", str(tmp_path / "gate"), "--baseline", str(BASELINE)])
    assert r.exit_code == 0, r.output + (r.stderr or "")
