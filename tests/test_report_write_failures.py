"""A full disk (or any OS error) while writing results: one-line InputError, no temp file, old files intact."""

from __future__ import annotations

import errno
import os

import numpy as np
import pandas as pd
import pytest
from report_helpers import knn_result, make_run, patch_hit_result, provenance
from typer.testing import CliRunner

import lastvit_eval.cli  # noqa: F401  (registers the commands)
from lastvit_eval.app import app
from lastvit_eval.errors import InputError
from lastvit_eval.report import plots
from lastvit_eval.report.aggregate import aggregate, write_report
from lastvit_eval.report.compare import compare_runs, write_comparison
from lastvit_eval.report.gate import compare_to_baseline, write_gate
from lastvit_eval.report.write import atomic_write_text, write_run

runner = CliRunner(env={"COLUMNS": "1000"})
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def temp_files(folder) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or ".probe." in p.name]


def disk_full_after(monkeypatch, n_ok: int) -> None:
    """fsync (where a full disk shows up for buffered writes) fails from the (n_ok + 1)-th file on."""
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise ENOSPC
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def two_results(seed: int):
    rng = np.random.default_rng(seed)
    return [patch_hit_result(rng.random(50) < 0.5), knn_result({10: 70.0 + seed, 20: 71.0})]


@pytest.mark.parametrize("n_ok", [0, 1, 3])
def test_write_run_disk_full_keeps_previous_run(tmp_path, monkeypatch, n_ok):
    out = tmp_path / "run"
    write_run(out, two_results(0), provenance("c", "cls"))
    before = snapshot(out)
    disk_full_after(monkeypatch, n_ok)
    with pytest.raises(InputError) as e:
        write_run(out, two_results(1), provenance("c", "cls"))
    msg = str(e.value)
    assert msg.startswith(str(out)) and msg.endswith(": cannot write (No space left on device)")
    assert "\n" not in msg
    assert temp_files(out) == []
    assert snapshot(out) == before  # every file of the previous run, byte for byte (metrics.json included)


def test_write_run_rename_failure_removes_the_rest(tmp_path, monkeypatch):
    out = tmp_path / "run"
    write_run(out, two_results(0), provenance("c", "cls"))
    real, calls = os.replace, {"n": 0}

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(InputError, match=r"cannot write \(Input/output error\)"):
        write_run(out, two_results(1), provenance("c", "cls"))
    assert temp_files(out) == []
    assert (out / "metrics.json").read_text().count('"knn.k10.top1"') == 1  # metrics.json (renamed last) is the old one
    assert '"value": 70.0' in (out / "metrics.json").read_text()


def test_atomic_write_text_names_file_and_reason(tmp_path, monkeypatch):
    target = tmp_path / "x.txt"
    target.write_text("old")
    disk_full_after(monkeypatch, 0)
    with pytest.raises(InputError, match=rf"^{tmp_path}/x.txt: cannot write \(No space left on device\)$"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and temp_files(tmp_path) == []


def test_report_gate_compare_and_plot_writes(tmp_path, monkeypatch):
    a = make_run(tmp_path / "runs", "a", "c", "cls", two_results(0))
    b = make_run(tmp_path / "runs", "b", "c", "last", two_results(1))
    long = aggregate([tmp_path / "runs"])
    rep = tmp_path / "rep"
    write_report(long, rep)
    gate_report = compare_to_baseline(long, long.assign(tolerance=np.nan))
    write_gate(gate_report, rep)
    cmp = compare_runs(a, b, "patch_hit.top1", n_resamples=200)
    write_comparison(cmp, rep / "cmp")
    before, before_cmp = snapshot(rep), snapshot(rep / "cmp")

    disk_full_after(monkeypatch, 1)
    for call in (lambda: write_report(long, rep), lambda: write_gate(gate_report, rep),
                 lambda: write_comparison(cmp, rep / "cmp"),
                 lambda: plots.score_distribution(np.arange(5.0), np.arange(5.0), rep / "d.png")):
        with pytest.raises(InputError, match=r"cannot write \(No space left on device\)"):
            call()
    assert snapshot(rep) == before and snapshot(rep / "cmp") == before_cmp
    assert temp_files(tmp_path) == [] and not (rep / "d.png").exists()


def test_cli_disk_full_is_one_line_exit_2(tmp_path, monkeypatch):
    make_run(tmp_path / "runs", "a", "c", "cls", two_results(0))
    disk_full_after(monkeypatch, 0)
    res = runner.invoke(app, ["report", str(tmp_path / "runs"), "-o", str(tmp_path / "rep")])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert f"{tmp_path}/rep/report.csv: cannot write (No space left on device)" in res.output
    assert temp_files(tmp_path) == []


def test_table_csv_round_trips(tmp_path):
    """Staged writes write what the direct writes did: table.csv reads back to the record's numbers."""
    out = tmp_path / "r"
    record = write_run(out, two_results(0), provenance("c", "cls"))
    t = pd.read_csv(out / "table.csv").set_index("metric")
    for key, m in record["metrics"].items():
        assert t.loc[key, "value"] == pytest.approx(m["value"], rel=1e-5)
    assert sorted(record["files"]) == sorted(p.name for p in out.iterdir())
