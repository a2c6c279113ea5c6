"""`report`: many runs -> one table, values as written, fixed order and formatting, clear input errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from report_helpers import knn_result, make_run, patch_hit_result
from typer.testing import CliRunner

import lastvit_eval.cli  # noqa: F401  (registers the commands)
from lastvit_eval.app import app
from lastvit_eval.report.aggregate import aggregate, natural_key

runner = CliRunner(env={"COLUMNS": "1000"})  # wide, so Rich neither folds tables nor error lines


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Literal Wilson score interval, in percent: an independent reference for the CI columns."""
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return 100 * (center - half), 100 * (center + half)


@pytest.fixture()
def runs(tmp_path):
    rng = np.random.default_rng(0)
    hits = {
        "cls": rng.random(120) < 0.40,
        "last": rng.random(120) < 0.55,
        "dino-last": rng.random(80) < 0.70,
    }
    root = tmp_path / "runs"
    make_run(root, "vitb16-last", "ViT_190k", "last", [patch_hit_result(hits["last"]),
                                                        knn_result({10: 72.5, 100: 71.0, 20: 73.25})])
    make_run(root, "vitb16-cls", "ViT_190k", "cls", [patch_hit_result(hits["cls"]),
                                                      knn_result({10: 70.0, 100: 69.5, 20: 71.0})])
    other = make_run(tmp_path / "elsewhere", "dino-last", "dino_vitb16", "last",
                     [patch_hit_result(hits["dino-last"])])
    return root, other, hits


def test_aggregate_values_and_order(runs, tmp_path):
    root, other, hits = runs
    out = tmp_path / "report"
    res = runner.invoke(app, ["report", str(root), str(other), "--output", str(out)])
    assert res.exit_code == 0, res.output

    long = pd.read_csv(out / "report.csv")
    assert list(long.columns) == ["checkpoint", "pooling", "dataset", "run", "metric", "value", "ci_low",
                                  "ci_high", "n", "unit", "direction"]
    assert set(long["unit"]) == {"percent"} and set(long["direction"]) == {"higher"}
    # rows sorted by checkpoint, pooling, dataset, run; metrics in natural order (k10 < k20 < k100)
    assert list(dict.fromkeys(long["run"])) == ["vitb16-cls", "vitb16-last", "dino-last"]
    assert list(long.loc[long["run"] == "vitb16-cls", "metric"]) == [
        "knn.k10.top1", "knn.k20.top1", "knn.k100.top1", "patch_hit.top1", "patch_hit.top5"]
    assert sorted(long["checkpoint"].unique()) == ["ViT_190k", "dino_vitb16"]

    for run, pooling, key in (("vitb16-cls", "cls", "cls"), ("vitb16-last", "last", "last"),
                              ("dino-last", "last", "dino-last")):
        row = long[(long["run"] == run) & (long["metric"] == "patch_hit.top1")].iloc[0]
        k, n = int(hits[key].sum()), len(hits[key])
        lo, hi = wilson(k, n)
        assert row["pooling"] == pooling and row["n"] == n
        assert row["value"] == pytest.approx(100 * k / n, abs=1e-4)  # 4 decimals in the CSV
        assert row["ci_low"] == pytest.approx(lo, abs=1e-4) and row["ci_high"] == pytest.approx(hi, abs=1e-4)
    knn = long[(long["run"] == "vitb16-last") & (long["metric"] == "knn.k20.top1")].iloc[0]
    assert (knn["value"], knn["ci_low"], knn["ci_high"]) == (73.25, 72.25, 74.25)

    wide = pd.read_csv(out / "report_wide.csv")
    assert list(wide.columns[:4]) == ["checkpoint", "pooling", "dataset", "run"]
    assert list(wide.columns[4:7]) == ["knn.k10.top1", "knn.k10.top1.ci_low", "knn.k10.top1.ci_high"]
    assert pd.isna(wide.loc[wide["run"] == "dino-last", "knn.k10.top1"]).all()  # no knn in that run

    md = (out / "report.md").read_text()
    header = md.splitlines()[0]
    assert header == ("| checkpoint | pooling | dataset | run | knn.k10.top1 | knn.k20.top1 | knn.k100.top1 "
                      "| patch_hit.top1 | patch_hit.top5 |")
    assert "| 73.25 [72.25, 74.25] |" in md
    k = int(hits["cls"].sum())
    lo, hi = wilson(k, 120)
    assert f"| {100 * k / 120:.2f} [{lo:.2f}, {hi:.2f}] |" in md
    # the CSV is written with fixed decimals so committed tables diff cleanly
    assert "73.2500,72.2500,74.2500,1000,percent,higher" in (out / "report.csv").read_text()


def test_report_is_byte_stable(runs, tmp_path):
    root, other, _ = runs
    for name in ("a", "b"):
        # different argument order, same table
        args = [str(root), str(other)] if name == "a" else [str(other), str(root)]
        assert runner.invoke(app, ["report", *args, "--output", str(tmp_path / name)]).exit_code == 0
    for f in ("report.csv", "report_wide.csv", "report.md"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_natural_key_orders_numbers():
    names = ["knn.k200.top1", "knn.k10.top5", "knn.k100.top1", "knn.k20.top1", "knn.k10.top1"]
    assert sorted(names, key=natural_key) == ["knn.k10.top1", "knn.k10.top5", "knn.k20.top1", "knn.k100.top1",
                                              "knn.k200.top1"]


def test_missing_and_invalid_runs_are_input_errors(runs, tmp_path):
    root, _, _ = runs
    res = runner.invoke(app, ["report", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    assert res.exit_code == 2 and "nope" in res.output and "does not exist" in res.output

    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["report", str(empty), "--output", str(tmp_path / "o")])
    assert res.exit_code == 2 and "empty" in res.output and "metrics.json" in res.output

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("{not json")
    res = runner.invoke(app, ["report", str(root), str(bad), "--output", str(tmp_path / "o")])
    assert res.exit_code == 2 and "bad/metrics.json" in res.output and "Traceback" not in res.output

    (bad / "metrics.json").write_text(json.dumps({"schema_version": 1, "metrics": {"x.top1": {"n": 3}}}))
    res = runner.invoke(app, ["report", str(bad), "--output", str(tmp_path / "o")])
    assert res.exit_code == 2 and "x.top1" in res.output


def test_same_identity_twice_is_rejected(runs, tmp_path):
    root, _, _ = runs
    copy = tmp_path / "copy"
    make_run(copy, "vitb16-cls", "ViT_190k", "cls", [knn_result({10: 1.0})])
    with pytest.raises(Exception, match="same checkpoint/pooling/dataset/run"):
        aggregate([root, copy])
