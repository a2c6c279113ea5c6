"""Regression gate: pass, fail (exit 1), MISSING fails, NEW does not, per-row tolerance, step summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from report_helpers import knn_result, make_run, patch_hit_result
from typer.testing import CliRunner

import lastvit_eval.cli  # noqa: F401  (registers the commands)
from lastvit_eval.app import app
from lastvit_eval.errors import InputError
from lastvit_eval.report.aggregate import aggregate
from lastvit_eval.report.gate import compare_to_baseline, read_baseline

runner = CliRunner(env={"COLUMNS": "1000"})


@pytest.fixture()
def setup(tmp_path):
    """Two runs, and the report they produce copied to baseline.csv (as a CI job would commit it)."""
    rng = np.random.default_rng(1)
    root = tmp_path / "runs"
    make_run(root, "cls", "ViT_190k", "cls", [patch_hit_result(rng.random(100) < 0.4),
                                               knn_result({10: 70.0, 20: 71.0})])
    make_run(root, "last", "ViT_190k", "last", [patch_hit_result(rng.random(100) < 0.55),
                                                 knn_result({10: 72.0, 20: 73.0})])
    out = tmp_path / "first"
    assert runner.invoke(app, ["report", str(root), "--output", str(out)]).exit_code == 0
    baseline = pd.read_csv(out / "report.csv")
    return root, baseline, tmp_path


def gate(root, baseline: pd.DataFrame, tmp_path, *extra: str, env: dict | None = None):
    path = tmp_path / "baseline.csv"
    baseline.to_csv(path, index=False)
    out = tmp_path / "gate_out"
    res = runner.invoke(app, ["report", str(root), "--output", str(out), "--baseline", str(path), *extra],
                        env=env)
    return res, out


def gate_table(out) -> pd.DataFrame:
    """The "All metrics" table of gate.md, as strings (bold markers removed)."""
    lines = (out / "gate.md").read_text().split("#### All metrics\n\n", 1)[1].splitlines()
    rows = [[c.strip().strip("*") for c in line.strip().strip("|").split("|")] for line in lines if line.strip()]
    return pd.DataFrame(rows[2:], columns=rows[0])


def row_of(out, metric: str, pooling: str) -> pd.Series:
    t = gate_table(out)
    sel = t[(t["metric"] == metric) & (t["pooling"] == pooling)]
    assert len(sel) == 1, f"{metric}/{pooling} not once in gate.md"
    return sel.iloc[0]


def status_of(out, metric: str, pooling: str) -> str:
    return row_of(out, metric, pooling)["status"]


def bump(baseline: pd.DataFrame, metric: str, pooling: str, by: float) -> pd.DataFrame:
    b = baseline.copy()
    sel = (b["metric"] == metric) & (b["pooling"] == pooling)
    assert sel.sum() == 1
    b.loc[sel, "value"] += by
    return b


def test_report_csv_is_a_passing_baseline(setup):
    root, baseline, tmp_path = setup
    res, out = gate(root, baseline, tmp_path)
    assert res.exit_code == 0, res.output
    md = (out / "gate.md").read_text()
    assert md.startswith("### Regression gate PASSED: 0 fail, 0 missing, 0 new, 8 pass")
    assert "run(s): cls, last" in md.splitlines()[0]
    assert list(gate_table(out).columns) == ["checkpoint", "pooling", "dataset", "metric", "run", "unit",
                                             "direction", "baseline", "current", "delta", "tolerance", "status",
                                             "note"]
    assert "Not passing" not in md  # nothing flagged: only the full table
    # the run folder name is not part of the match: a renamed run still lines up
    renamed = baseline.assign(run="ci-12345")
    res, _ = gate(root, renamed, tmp_path)
    assert res.exit_code == 0, res.output


def test_drop_beyond_tolerance_fails_with_exit_1(setup):
    root, baseline, tmp_path = setup
    res, out = gate(root, bump(baseline, "knn.k20.top1", "last", +0.75), tmp_path)  # now 0.75 below baseline
    assert res.exit_code == 1
    assert status_of(out, "knn.k20.top1", "last") == "FAIL"
    assert status_of(out, "knn.k20.top1", "cls") == "PASS"
    row = row_of(out, "knn.k20.top1", "last")
    assert tuple(row[["baseline", "current", "delta", "tolerance", "unit"]]) == ("73.75", "73.00", "-0.75", "0.50",
                                                                                 "percent")
    assert "| **FAIL** |" in (out / "gate.md").read_text().split("#### All metrics")[0]  # listed first, too
    # a drop of exactly the tolerance passes; a wider tolerance lets 0.75 pass too
    assert gate(root, bump(baseline, "knn.k20.top1", "last", +0.5), tmp_path)[0].exit_code == 0
    wider = gate(root, bump(baseline, "knn.k20.top1", "last", +0.75), tmp_path, "--tolerance", "1")
    assert wider[0].exit_code == 0


def test_missing_metric_and_missing_run_fail(setup):
    root, baseline, tmp_path = setup
    extra = baseline.iloc[[0]].assign(metric="knn.k200.top1", value=60.0)
    res, out = gate(root, pd.concat([baseline, extra]), tmp_path)
    assert res.exit_code == 1 and "MISSING" in res.output
    assert status_of(out, "knn.k200.top1", "cls") == "MISSING"

    gone = baseline.iloc[[0]].assign(checkpoint="dino_vitb16")  # a whole run the current results lack
    res, out = gate(root, pd.concat([baseline, gone]), tmp_path)
    assert res.exit_code == 1
    gone_row = gate_table(out)[gate_table(out)["checkpoint"] == "dino_vitb16"].iloc[0]
    assert gone_row["status"] == "MISSING" and gone_row["run"] == baseline.iloc[0]["run"]


def test_new_metric_is_reported_not_failed(setup):
    root, baseline, tmp_path = setup
    res, out = gate(root, baseline[baseline["metric"] != "patch_hit.top5"], tmp_path)
    assert res.exit_code == 0, res.output
    assert status_of(out, "patch_hit.top5", "cls") == "NEW"
    assert status_of(out, "patch_hit.top5", "last") == "NEW"
    assert "2 new" in (out / "gate.md").read_text().splitlines()[0]


def test_tolerance_column_overrides_default(setup):
    root, baseline, tmp_path = setup
    b = bump(bump(baseline, "knn.k10.top1", "cls", +1.0), "knn.k10.top1", "last", +0.3)
    b["tolerance"] = np.nan  # empty -> the --tolerance default (0.5)
    b.loc[(b["metric"] == "knn.k10.top1") & (b["pooling"] == "cls"), "tolerance"] = 2.0  # 1.0 drop allowed
    b.loc[(b["metric"] == "knn.k10.top1") & (b["pooling"] == "last"), "tolerance"] = 0.1  # 0.3 drop is not
    res, out = gate(root, b, tmp_path)
    assert res.exit_code == 1
    assert status_of(out, "knn.k10.top1", "cls") == "PASS"
    assert status_of(out, "knn.k10.top1", "last") == "FAIL"
    row = row_of(out, "knn.k10.top1", "last")
    assert tuple(row[["baseline", "current", "delta", "tolerance"]]) == ("72.30", "72.00", "-0.30", "0.10")


def test_step_summary_is_appended(setup):
    root, baseline, tmp_path = setup
    summary = tmp_path / "summary.md"
    summary.write_text("## earlier step\n")
    res, out = gate(root, bump(baseline, "patch_hit.top1", "cls", +5.0), tmp_path,
                    env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert res.exit_code == 1
    text = summary.read_text()
    assert text.startswith("## earlier step\n### Regression gate FAILED: 1 fail")
    assert text == "## earlier step\n" + (out / "gate.md").read_text() + "\n"


def test_wide_csv_is_a_valid_baseline(setup):
    root, _, tmp_path = setup
    res = runner.invoke(app, ["report", str(root), "--output", str(tmp_path / "w"), "--baseline",
                              str(tmp_path / "first" / "report_wide.csv")])
    assert res.exit_code == 0, res.output
    assert "0 new, 8 pass" in (tmp_path / "w" / "gate.md").read_text()


def test_ambiguous_identity_matches_on_run(tmp_path):
    """Two LAST runs of one checkpoint (k=1, k=4): `run` joins the key so each is gated against its own."""
    root = tmp_path / "runs"
    make_run(root, "last-k1", "ViT_190k", "last", [knn_result({20: 73.0})])
    make_run(root, "last-k4", "ViT_190k", "last", [knn_result({20: 74.0})])
    current = aggregate([root])
    baseline = current[["checkpoint", "pooling", "dataset", "run", "metric", "value"]].copy()
    baseline["tolerance"] = np.nan
    baseline.loc[baseline["run"] == "last-k4", "value"] = 75.0
    report = compare_to_baseline(current, baseline)
    assert report.key == ["checkpoint", "pooling", "dataset", "run", "metric"]
    assert dict(zip(report.table["run"], report.table["status"], strict=True)) == {"last-k1": "PASS",
                                                                                   "last-k4": "FAIL"}


def test_bad_baseline_is_input_error(setup):
    root, baseline, tmp_path = setup
    res, _ = gate(root, baseline.drop(columns=["dataset"]), tmp_path)
    assert res.exit_code == 2 and "dataset" in res.output
    b = baseline.astype({"value": object})
    b.loc[0, "value"] = "n/a%"
    with pytest.raises(InputError, match="not a number"):
        path = tmp_path / "b.csv"
        b.to_csv(path, index=False)
        read_baseline(path)
    res = runner.invoke(app, ["report", str(root), "--output", str(tmp_path / "x"), "--baseline",
                              str(tmp_path / "absent.csv")])
    assert res.exit_code == 2 and "absent.csv" in res.output
