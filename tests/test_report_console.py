"""Console tables of the report path read at 100 columns: no line longer, every number whole.

Rendered the way a CI log sees them: through Typer's CliRunner with no terminal and no COLUMNS (Rich alone
would wrap at 80), and with Rich's recording Console at width 100 for the end-of-run table.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from report_helpers import make_run, patch_hit_result
from rich.console import Console
from typer.testing import CliRunner

import lastvit_eval.cli  # noqa: F401  (registers the commands)
from lastvit_eval.app import app
from lastvit_eval.report import console as rc
from lastvit_eval.report.aggregate import aggregate
from lastvit_eval.report.show import make_console
from lastvit_eval.result import Metric, Result

BOX = "┏┃┡│├└┗━─"


@pytest.fixture()
def cli(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    return CliRunner()


def many_runs(root, n_runs: int = 5):
    """Runs with 20 metrics (24 columns in the old console table: k-NN at four k, two tops, probe, head, ...)."""
    rng = np.random.default_rng(3)
    for i in range(n_runs):
        metrics = {}
        for k in (10, 20, 100, 200):
            for t in (1, 5):
                v = float(rng.uniform(40, 99))
                metrics[f"knn.k{k}.top{t}"] = Metric(v, v - 3.1, v + 2.9, 50000, "wilson", "percent", "higher")
        for name in ("top1", "top5", "mean_per_class_recall"):
            for ns in ("linear_probe", "classify", "zero_shot"):
                v = float(rng.uniform(40, 99))
                metrics[f"{ns}.{name}"] = Metric(v, v - 1.2, v + 1.3, 50000, "wilson", "percent", "higher")
        ph = patch_hit_result(rng.random(120) < 0.3 + 0.05 * i, fg_bg_gap=float(rng.uniform(-0.2, 0.4)))
        make_run(root, f"vit-b16-run-{i}", f"checkpoint_number_{i}.pth", "last" if i % 2 else "cls",
                 [ph, Result(evaluator="many", metrics=metrics)])


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line[:1] in BOX]


def numbers_in_csv(long: pd.DataFrame) -> list[str]:
    """Every value and CI bound as the console prints it (2 digits, 3 for cosine)."""
    out = []
    for _, r in long.iterrows():
        d = 3 if r["unit"] == "cosine" else 2
        out += [f"{r[c]:.{d}f}" for c in ("value", "ci_low", "ci_high") if not pd.isna(r[c])]
    return out


def assert_whole(text: str, numbers: list[str], cis: list[str] = ()) -> None:
    tokens = set(re.findall(r"[-+]?\d+\.\d+", text))
    missing = [n for n in numbers if n not in tokens] + [c for c in cis if c not in text]
    assert not missing, f"numbers split or missing: {missing[:5]}"


def cis_of(long: pd.DataFrame) -> list[str]:
    d = np.where(long["unit"] == "cosine", 3, 2)
    return [f"[{lo:.{k}f}, {hi:.{k}f}]" for lo, hi, k in zip(long["ci_low"], long["ci_high"], d, strict=True)]


def test_report_long_form_fits_100_columns(cli, tmp_path):
    many_runs(tmp_path / "runs")
    res = cli.invoke(app, ["report", str(tmp_path / "runs"), "-o", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    lines = table_lines(res.output)
    assert sum(bool(re.search(r"│ (%|cos) +│$", line)) for line in lines) == 5 * 20  # a row per run and metric
    assert max(len(line) for line in lines) <= 100
    assert max(len(line) for line in lines) > 80  # the explicit width is used, not Rich's 80 default
    long = aggregate([tmp_path / "runs"])  # exact values (the CSV's 4 decimals could round differently)
    assert long["metric"].nunique() == 20
    assert_whole(res.output, numbers_in_csv(long), cis_of(long))  # a CI never splits over two lines
    # files keep every column
    wide = pd.read_csv(tmp_path / "rep" / "report_wide.csv")
    assert len(wide.columns) == 4 + 3 * 20


def test_report_pivot_by_metrics(cli, tmp_path):
    many_runs(tmp_path / "runs")
    res = cli.invoke(app, ["report", str(tmp_path / "runs"), "-o", str(tmp_path / "rep"),
                           "--metrics", "knn.k20.top1,patch_hit.fg_bg_gap", "-m", "linear_probe.top1"])
    assert res.exit_code == 0, res.output
    lines = table_lines(res.output)
    assert sum("vit-b16-run-" in line for line in lines) == 5  # one row per run
    assert max(len(line) for line in lines) <= 100
    long = aggregate([tmp_path / "runs"])
    chosen = long[long["metric"].isin(["knn.k20.top1", "patch_hit.fg_bg_gap", "linear_probe.top1"])]
    assert_whole(res.output, numbers_in_csv(chosen))
    assert "knn.k10.top1" not in res.output

    # too many side by side: values only, then one row per run and metric; never a cut number
    res = cli.invoke(app, ["report", str(tmp_path / "runs"), "-o", str(tmp_path / "rep"), "--metrics", "knn.*"])
    assert res.exit_code == 0, res.output
    assert max(len(line) for line in table_lines(res.output)) <= 100
    knn = long[long["metric"].str.startswith("knn.")]
    assert_whole(res.output, [f"{v:.2f}" for v in knn["value"]])
    res = cli.invoke(app, ["report", str(tmp_path / "runs"), "-o", str(tmp_path / "rep"), "--metrics", "*"])
    assert "do not fit in 100 columns" in res.output
    assert max(len(line) for line in table_lines(res.output)) <= 100
    assert_whole(res.output, numbers_in_csv(long))

    res = cli.invoke(app, ["report", str(tmp_path / "runs"), "-o", str(tmp_path / "x"), "--metrics", "nope.*"])
    assert res.exit_code == 2 and "nope.*" in res.output and not (tmp_path / "x").exists()


def test_gate_prints_failures_not_every_passing_row(cli, tmp_path):
    many_runs(tmp_path / "runs")
    assert cli.invoke(app, ["report", str(tmp_path / "runs"), "-o", str(tmp_path / "rep")]).exit_code == 0
    base = pd.read_csv(tmp_path / "rep" / "report.csv")
    sel = (base["metric"] == "knn.k100.top5") & (base["run"] == "vit-b16-run-3")
    base.loc[sel, "value"] += 2.0
    base.to_csv(tmp_path / "b.csv", index=False)
    res = cli.invoke(app, ["report", str(tmp_path / "runs"), "-o", str(tmp_path / "rep"),
                           "--baseline", str(tmp_path / "b.csv")])
    assert res.exit_code == 1
    gate_part = res.output.split("rows that did not pass", 1)[1]
    gate_lines = table_lines(gate_part)
    assert sum("FAIL" in line for line in gate_lines) == 1 and not any("PASS" in line for line in gate_lines)
    assert max(len(line) for line in gate_lines) <= 100
    row = gate_lines.index(next(line for line in gate_lines if "FAIL" in line))
    current = base.loc[sel, "value"].iloc[0] - 2.0
    assert "vit-b16-run-3" in gate_lines[row] and f"{current:.2f}" in gate_lines[row] and "-2.00" in gate_lines[row]
    assert "knn.k100.top5" in gate_lines[row + 1] and "higher" in gate_lines[row + 1]  # stacked under the run
    last = res.output.strip().splitlines()[-1]
    assert "Regression gate FAILED: 1 fail" in last and "vit-b16-run-3 (knn.k100.top5 FAIL)" in last
    md = (tmp_path / "rep" / "gate.md").read_text()
    assert md.count("| PASS |") == 5 * 20 - 1  # every passing row is in the file


def test_compare_tables_fit(cli, tmp_path):
    deep = tmp_path / ("a-rather-long-folder-name-" * 3) / "results"
    hits = np.arange(60) % 3 == 0
    classes = [f"n0{1440764 + i % 7}" for i in range(60)]
    a = make_run(deep, "cls", "ViT_190k", "cls", [patch_hit_result(hits, classes=classes)])
    b = make_run(deep, "last", "ViT_190k", "last", [patch_hit_result(np.roll(hits, 7) | hits, classes=classes)])
    res = cli.invoke(app, ["compare", str(a), str(b)])
    assert res.exit_code == 0, res.output
    lines = table_lines(res.output)
    assert max(len(line) for line in lines) <= 100
    assert_whole(res.output, ["33.33"])
    assert "percent, higher" in res.output


def test_end_of_run_table_at_width_100(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    result = patch_hit_result(np.arange(97) % 2 == 0, fg_bg_gap=0.3217)
    rc.print_result(result, "patch-hit  a-checkpoint-with-a-long-name.pth  pooling=last  rule=any  " * 2)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100
    assert "50.52" in out and "0.322" in out and "cosine" in out and "[0.312, 0.332]" in out

    rec = Console(record=True, width=100)
    frame, sections, _ = rc.long_view(pd.DataFrame([{
        "checkpoint": "c" * 60, "pooling": "last", "dataset": "imagenet-val-pib", "run": "r" * 70,
        "metric": "linear_probe.mean_per_class_recall", "value": 55.123, "ci_low": 54.0, "ci_high": 56.25,
        "n": 50000, "unit": "percent", "direction": "higher"}]))
    rc.print_frame(frame, console=rec, sections=sections)
    text = rec.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "55.12" in text and "[54.00, 56.25]" in text and "50000" in text


def test_console_width_without_a_terminal(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert make_console().width == 100
    monkeypatch.setenv("COLUMNS", "132")
    assert make_console().width == 132


def test_table_md_sorts_metric_keys_naturally(tmp_path):
    run = make_run(tmp_path, "r", "c", "cls", [Result(evaluator="knn", metrics={
        f"knn.k{k}.top1": Metric(50.0 + k / 1000, unit="percent", direction="higher") for k in (200, 10, 100, 20)})])
    md_metrics = [line.split("|")[5].strip() for line in (run / "table.md").read_text().splitlines()[2:]]
    assert md_metrics == ["knn.k10.top1", "knn.k20.top1", "knn.k100.top1", "knn.k200.top1"]
    assert list(pd.read_csv(run / "table.csv")["metric"]) == md_metrics
