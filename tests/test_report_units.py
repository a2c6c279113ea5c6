"""Units and directions through the report path, and a gate that judges each metric in its own unit.

The cases the issue names: a +0.32 -> -0.13 sign flip of the cosine fg_bg_gap fails (it passed under the
old 0.5-point rule), a 0.4-point drop of a percentage passes, a lower-is-better metric that rises fails.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from report_helpers import knn_result, make_run, patch_hit_result, strip_units
from typer.testing import CliRunner

import lastvit_eval.cli  # noqa: F401  (registers the commands)
from lastvit_eval.app import app
from lastvit_eval.errors import InputError
from lastvit_eval.report.aggregate import aggregate, load_record
from lastvit_eval.report.gate import DEFAULT_TOLERANCE, compare_to_baseline, parse_tolerances, read_baseline
from lastvit_eval.report.units import infer_legacy
from lastvit_eval.result import Metric, Result

runner = CliRunner(env={"COLUMNS": "1000"})
HITS = np.arange(100) % 5 < 2  # 40 % hit


def run_with(root, name: str, gap: float | None = None, extra: dict[str, Metric] | None = None):
    """One run: patch_hit (top1 40 %, optional fg_bg_gap) plus any extra declared metrics."""
    results = [patch_hit_result(HITS, fg_bg_gap=gap)]
    if extra:
        results.append(Result(evaluator="timing", metrics=extra))
    return make_run(root, name, "ViT_190k", "last", results)


def gate(tmp_path, baseline: pd.DataFrame, *extra: str):
    path = tmp_path / "baseline.csv"
    baseline.to_csv(path, index=False)
    out = tmp_path / "gate_out"
    res = runner.invoke(app, ["report", str(tmp_path / "now"), "-o", str(out), "--baseline", str(path), *extra])
    return res, out


def baseline_from(tmp_path, name: str = "then") -> pd.DataFrame:
    out = tmp_path / f"report_{name}"
    assert runner.invoke(app, ["report", str(tmp_path / name), "-o", str(out)]).exit_code == 0
    return pd.read_csv(out / "report.csv", keep_default_na=False)


def gate_rows(out) -> pd.DataFrame:
    lines = (out / "gate.md").read_text().split("#### All metrics\n\n", 1)[1].splitlines()
    rows = [[c.strip().strip("*") for c in line.strip().strip("|").split("|")] for line in lines if line.strip()]
    return pd.DataFrame(rows[2:], columns=rows[0]).set_index("metric")


def test_units_reach_every_table(tmp_path):
    run = run_with(tmp_path / "then", "r", gap=0.32, extra={"timing.seconds": Metric(12.5, unit="seconds",
                                                                                     direction="lower")})
    table = pd.read_csv(run / "table.csv").set_index("metric")
    assert table.loc["patch_hit.fg_bg_gap", ["unit", "direction"]].tolist() == ["cosine", "higher"]
    assert table.loc["timing.seconds", ["unit", "direction"]].tolist() == ["seconds", "lower"]
    md = (run / "table.md").read_text()
    assert md.splitlines()[0].endswith("| n | unit | direction |")
    assert "| patch_hit.fg_bg_gap | 0.320 | 0.310 | 0.330 | 100 | cosine | higher |" in md  # cosine: 3 digits
    long = baseline_from(tmp_path).set_index("metric")
    assert long.loc["patch_hit.top1", ["unit", "direction"]].tolist() == ["percent", "higher"]
    assert long.loc["patch_hit.fg_bg_gap", "unit"] == "cosine"
    back = read_baseline(tmp_path / "report_then" / "report.csv").set_index("metric")
    assert back.loc["timing.seconds", ["unit", "direction"]].tolist() == ["seconds", "lower"]


def test_fg_bg_gap_sign_flip_fails(tmp_path):
    run_with(tmp_path / "then", "r", gap=0.32)
    baseline = baseline_from(tmp_path)
    run_with(tmp_path / "now", "r", gap=-0.13)
    res, out = gate(tmp_path, baseline)
    assert res.exit_code == 1, res.output
    row = gate_rows(out).loc["patch_hit.fg_bg_gap"]
    assert (row["unit"], row["baseline"], row["current"], row["delta"], row["tolerance"], row["status"]) == (
        "cosine", "0.320", "-0.130", "-0.450", "0.020", "FAIL")
    assert gate_rows(out).loc["patch_hit.top1", "status"] == "PASS"
    # the old rule (0.5 for every metric) would have passed it: only an explicit override does now
    res, out = gate(tmp_path, baseline, "--tolerance", "patch_hit.fg_bg_gap=0.5")
    assert res.exit_code == 0, res.output
    assert gate_rows(out).loc["patch_hit.fg_bg_gap", "tolerance"] == "0.500"


def test_small_cosine_drop_passes_and_just_over_fails(tmp_path):
    run_with(tmp_path / "then", "r", gap=0.32)
    baseline = baseline_from(tmp_path)
    run_with(tmp_path / "now", "r", gap=0.305)  # -0.015 < 0.02
    assert gate(tmp_path, baseline)[0].exit_code == 0
    run_with(tmp_path / "now", "r", gap=0.295)  # -0.025 > 0.02
    assert gate(tmp_path, baseline)[0].exit_code == 1


def test_percent_drop_of_0_4_points_passes_0_6_fails(tmp_path):
    run_with(tmp_path / "now", "r")
    now = baseline_from(tmp_path, "now")
    sel = now["metric"] == "patch_hit.top1"
    res, out = gate(tmp_path, now.assign(value=np.where(sel, now["value"] + 0.4, now["value"])))
    assert res.exit_code == 0, res.output
    assert gate_rows(out).loc["patch_hit.top1", "delta"] == "-0.40"
    res, out = gate(tmp_path, now.assign(value=np.where(sel, now["value"] + 0.6, now["value"])))
    assert res.exit_code == 1 and gate_rows(out).loc["patch_hit.top1", "status"] == "FAIL"
    # a bare number is the percent tolerance, as before units existed
    assert gate(tmp_path, now.assign(value=np.where(sel, now["value"] + 0.6, now["value"])),
                "--tolerance", "0.7")[0].exit_code == 0


def lower(v: float) -> dict[str, Metric]:
    return {"timing.error_rate": Metric(v, unit="percent", direction="lower"),
            "timing.drift": Metric(v / 100, unit="ratio", direction="none")}


def test_lower_is_better_rising_fails_falling_passes(tmp_path):
    run_with(tmp_path / "then", "r", extra=lower(10.0))
    baseline = baseline_from(tmp_path)
    run_with(tmp_path / "now", "r", extra=lower(10.6))  # error up 0.6 points; drift up 0.006 > 0.005
    res, out = gate(tmp_path, baseline)
    assert res.exit_code == 1
    rows = gate_rows(out)
    assert rows.loc["timing.error_rate", ["direction", "delta", "status"]].tolist() == ["lower", "+0.60", "FAIL"]
    assert rows.loc["timing.drift", ["direction", "status"]].tolist() == ["none", "FAIL"]
    run_with(tmp_path / "now", "r", extra=lower(9.0))  # error down: better; drift down 0.01: two-sided, fails
    rows = gate_rows(gate(tmp_path, baseline)[1])
    assert rows.loc["timing.error_rate", "status"] == "PASS"
    assert rows.loc["timing.drift", "status"] == "FAIL"
    run_with(tmp_path / "now", "r", extra=lower(9.6))  # drift -0.004: within 0.005 either way
    res, out = gate(tmp_path, baseline)
    assert res.exit_code == 0 and gate_rows(out).loc["timing.drift", "status"] == "PASS"


def test_seconds_are_not_gated_unless_asked(tmp_path):
    secs = {"timing.seconds": Metric(10.0, unit="seconds", direction="lower")}
    run_with(tmp_path / "then", "r", extra=secs)
    baseline = baseline_from(tmp_path)
    run_with(tmp_path / "now", "r", extra={"timing.seconds": Metric(50.0, unit="seconds", direction="lower")})
    res, out = gate(tmp_path, baseline)
    assert res.exit_code == 0, res.output
    assert gate_rows(out).loc["timing.seconds", "status"] == "UNGATED"
    assert "1 ungated" in (out / "gate.md").read_text().splitlines()[0]
    res, out = gate(tmp_path, baseline, "--tolerance", "seconds=5")
    assert res.exit_code == 1 and gate_rows(out).loc["timing.seconds", "status"] == "FAIL"


def test_records_without_units_infer_from_the_key_and_say_so(tmp_path):
    """Runs and baselines written before units existed: the flip still fails, and the output says why."""
    strip_units(run_with(tmp_path / "then", "r", gap=0.32))
    baseline = baseline_from(tmp_path)
    assert set(baseline["unit"]) == {""}  # report.csv keeps what the record says: nothing
    strip_units(run_with(tmp_path / "now", "r", gap=-0.13))
    res, out = gate(tmp_path, baseline)
    assert res.exit_code == 1
    assert "inferred from the metric key" in res.output
    rows = gate_rows(out)
    assert rows.loc["patch_hit.fg_bg_gap", ["unit", "tolerance", "status", "note"]].tolist() == [
        "cosine", "0.020", "FAIL", "unit inferred"]
    assert rows.loc["patch_hit.top1", ["unit", "tolerance"]].tolist() == ["percent", "0.50"]


def test_unknown_key_without_unit_fails_never_percent(tmp_path):
    run = run_with(tmp_path / "now", "r", extra={"timing.mystery": Metric(3.0)})
    strip_units(run)
    now = baseline_from(tmp_path, "now")
    res, out = gate(tmp_path, now)
    assert res.exit_code == 1
    row = gate_rows(out).loc["timing.mystery"]
    assert row["status"] == "NO-UNIT" and row["tolerance"] == "" and "add 'unit'" in row["note"]
    # the baseline can say what it is
    fixed = now.copy()
    fixed.loc[fixed["metric"] == "timing.mystery", ["unit", "direction"]] = ["score", "higher"]
    res, out = gate(tmp_path, fixed)
    assert res.exit_code == 0, res.output
    assert gate_rows(out).loc["timing.mystery", ["unit", "tolerance"]].tolist() == ["score", "0.010"]


def test_unit_change_fails(tmp_path):
    run_with(tmp_path / "now", "r", gap=0.32)
    now = baseline_from(tmp_path, "now")
    changed = now.copy()
    changed.loc[changed["metric"] == "patch_hit.fg_bg_gap", "unit"] = "ratio"
    res, out = gate(tmp_path, changed)
    assert res.exit_code == 1
    assert gate_rows(out).loc["patch_hit.fg_bg_gap", "note"] == "unit changed: baseline ratio, now cosine"


def test_parse_tolerances():
    t = parse_tolerances(["0.3", "cosine=0.05", "knn.*.top5=2", "knn.k20.top5=9"])
    assert t.lookup("knn.k10.top1", "percent") == 0.3
    assert t.lookup("patch_hit.fg_bg_gap", "cosine") == 0.05
    assert t.lookup("knn.k20.top5", "percent") == 2.0  # first matching glob wins
    assert t.lookup("x.t", "seconds") is None and t.lookup("x.c", "count") == 0.0
    assert parse_tolerances(None).by_unit == DEFAULT_TOLERANCE
    for bad in ("abc", "cosine=", "cosine=-1", "=1"):
        with pytest.raises(InputError, match="--tolerance"):
            parse_tolerances([bad])


def test_default_table_and_direction_on_frames():
    """The gate on frames directly: every unit's default, each direction, exactly-at-tolerance passes."""
    rows = [("percent", "higher", 50.0, 49.5), ("cosine", "higher", 0.3, 0.28), ("ratio", "lower", 0.1, 0.105),
            ("count", "none", 7, 7), ("count", "none", 7, 8), ("score", "higher", 1.0, 0.98)]
    ident = {"checkpoint": "c", "pooling": "p", "dataset": "d", "run": "r"}
    cur = pd.DataFrame([{**ident, "metric": f"m.{i}", "value": now, "unit": u, "direction": d}
                        for i, (u, d, _, now) in enumerate(rows)])
    base = pd.DataFrame([{**ident, "metric": f"m.{i}", "value": then, "tolerance": np.nan}
                         for i, (_, _, then, _) in enumerate(rows)])
    t = compare_to_baseline(cur, base).table.set_index("metric")
    assert t["status"].tolist() == ["PASS", "PASS", "PASS", "PASS", "FAIL", "FAIL"]
    assert t["tolerance"].tolist() == [0.5, 0.02, 0.005, 0.0, 0.0, 0.01]


def test_bad_units_in_inputs_are_input_errors(tmp_path, monkeypatch):
    run = run_with(tmp_path / "r", "x")
    record = json.loads((run / "metrics.json").read_text())
    record["metrics"]["patch_hit.top1"]["unit"] = "points"
    (run / "metrics.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"metrics.json: metric 'patch_hit.top1' has unit 'points'"):
        load_record(run)
    # a record of the schema that declares units must declare them
    monkeypatch.setattr("lastvit_eval.report.aggregate.SCHEMA_VERSION", 2)
    record["schema_version"] = 2
    record["metrics"]["patch_hit.top1"]["unit"] = None
    (run / "metrics.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="has no unit"):
        aggregate([run])
    bad = tmp_path / "b.csv"
    pd.DataFrame([{"checkpoint": "c", "pooling": "p", "dataset": "d", "metric": "m.top1", "value": 1,
                   "unit": "percent", "direction": "up"}]).to_csv(bad, index=False)
    with pytest.raises(InputError, match="direction 'up' on data row 1"):
        read_baseline(bad)


def test_infer_legacy_covers_what_schema_1_wrote():
    for key in ("patch_hit.top1", "patch_hit.top5", "knn.k200.top5", "linear_probe.mean_per_class_recall",
                "zero_shot.top1", "patch_hit.fg_above_bg", "classify.top1"):
        assert infer_legacy(key) == ("percent", "higher"), key
    assert infer_legacy("patch_hit.fg_bg_gap") == ("cosine", "higher")
    assert infer_legacy("engine.seconds") is None and infer_legacy("patch_hit.top1_gap") is None


def test_knn_only_run_keeps_working(tmp_path):
    make_run(tmp_path / "now", "k", "ViT_190k", "cls", [knn_result({10: 70.0, 20: 71.0})])
    now = baseline_from(tmp_path, "now")
    assert gate(tmp_path, now)[0].exit_code == 0
