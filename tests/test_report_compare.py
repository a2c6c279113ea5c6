"""Paired comparison: McNemar against a hand-computed 2x2, bootstrap CI sanity, join on image_id."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from report_helpers import make_run, patch_hit_result
from typer.testing import CliRunner

import lastvit_eval.cli  # noqa: F401  (registers the commands)
from lastvit_eval.app import app
from lastvit_eval.errors import InputError
from lastvit_eval.report.compare import compare_outcomes, compare_runs, mcnemar

runner = CliRunner(env={"COLUMNS": "1000"})


def two_by_two(both_right: int, a_only: int, b_only: int, both_wrong: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([True] * both_right + [True] * a_only + [False] * b_only + [False] * both_wrong)
    b = np.array([True] * both_right + [False] * a_only + [True] * b_only + [False] * both_wrong)
    return a, b


def test_mcnemar_hand_computed_case(tmp_path):
    """2x2 table: both right 20, A only 2, B only 8, both wrong 10 (n = 40).

    By hand: A = 22/40 = 55 %, B = 28/40 = 70 %, B - A = 15 points.
    Exact McNemar: under H0 the 10 discordant pairs are Binomial(10, 1/2); two-sided
    p = 2 * P(X <= 2) = 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * (1 + 10 + 45) / 1024 = 0.109375.
    Chi-square with continuity correction: (|8 - 2| - 1)^2 / (8 + 2) = 25 / 10 = 2.5 on 1 df,
    p = P(chi2_1 > 2.5) = P(|Z| > sqrt(2.5)) = erfc(sqrt(2.5 / 2)) = 0.1138.
    """
    a, b = two_by_two(20, 2, 8, 10)
    rng = np.random.default_rng(0)
    ids = [f"img{i:03d}" for i in range(40)]
    order = rng.permutation(40)  # B's rows come in another order: the join must not care
    run_a = make_run(tmp_path, "a", "ViT_190k", "cls", [patch_hit_result(a, ids=ids)])
    run_b = make_run(tmp_path, "b", "ViT_190k", "last",
                     [patch_hit_result(b[order], ids=[ids[i] for i in order])])

    out = tmp_path / "cmp"
    res = runner.invoke(app, ["compare", str(run_a), str(run_b), "--metric", "patch_hit.top1",
                              "--output", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads((out / "compare.json").read_text())
    cells = ("both_right", "a_right_b_wrong", "a_wrong_b_right", "both_wrong")
    assert tuple(got[k] for k in cells) == (20, 2, 8, 10)
    assert got["acc_a"] == pytest.approx(55.0) and got["acc_b"] == pytest.approx(70.0)
    assert got["diff"] == pytest.approx(15.0)
    assert got["mcnemar_exact_p"] == pytest.approx(112 / 1024, rel=1e-12)
    assert got["mcnemar_chi2"] == pytest.approx(2.5)
    assert got["mcnemar_chi2_p"] == pytest.approx(math.erfc(math.sqrt(1.25)), rel=1e-9)
    assert got["n_shared"] == 40 and got["n_only_a"] == 0 and got["n_only_b"] == 0
    assert got["diff_ci_low"] < 15.0 < got["diff_ci_high"]
    md = (out / "compare.md").read_text()
    assert "| A right | 20 | 2 |" in md and "| A wrong | 8 | 10 |" in md
    csv = pd.read_csv(out / "compare.csv")
    assert csv.loc[0, "class"] == "(all)" and csv.loc[0, "diff"] == pytest.approx(15.0)


def test_mcnemar_edge_cases():
    assert mcnemar(0, 0) == (1.0, None, 1.0)  # no discordant pair: no evidence either way
    p, chi2, _ = mcnemar(5, 5)
    assert p == 1.0 and chi2 == 0.0  # |5 - 5| - 1 < 0: the correction stops at zero
    # one-sided extreme: all 6 discordant favour B -> p = 2 / 2^6
    assert mcnemar(0, 6)[0] == pytest.approx(2 / 64)


def test_join_on_image_id_counts_unmatched(tmp_path):
    a_ids = [f"img{i}" for i in range(30)] + ["only_a1", "only_a2"]
    b_ids = [f"img{i}" for i in range(30)] + ["only_b1"]
    run_a = make_run(tmp_path, "a", "m", "cls", [patch_hit_result(np.arange(32) % 2 == 0, ids=a_ids)])
    run_b = make_run(tmp_path, "b", "m", "last", [patch_hit_result(np.ones(31, bool), ids=b_ids)])
    c = compare_runs(run_a, run_b, "patch_hit.top1", n_resamples=200)
    assert (c.n_shared, c.n_only_a, c.n_only_b) == (30, 2, 1)
    assert c.acc_a == pytest.approx(50.0) and c.acc_b == pytest.approx(100.0)  # on the 30 shared images only


def test_per_class_differences(tmp_path):
    # class x: A 3/4, B 1/4 -> -50 points; class y: A 0/2, B 2/2 -> +100 points
    a = np.array([1, 1, 1, 0, 0, 0], bool)
    b = np.array([1, 0, 0, 0, 1, 1], bool)
    classes = ["x", "x", "x", "x", "y", "y"]
    run_a = make_run(tmp_path, "a", "m", "cls", [patch_hit_result(a, classes=classes)])
    run_b = make_run(tmp_path, "b", "m", "last", [patch_hit_result(b, classes=classes)])
    pc = compare_runs(run_a, run_b, "patch_hit.top1", n_resamples=200).per_class.set_index("class")
    assert list(pc.index) == ["x", "y"]
    assert pc.loc["x", ["n", "a", "b", "diff", "a_only", "b_only"]].tolist() == pytest.approx(
        [4, 75.0, 25.0, -50.0, 2, 0])
    assert pc.loc["y", ["n", "a", "b", "diff", "a_only", "b_only"]].tolist() == pytest.approx(
        [2, 0.0, 100.0, 100.0, 0, 2])
    assert pc.loc["y", "mcnemar_exact_p"] == pytest.approx(0.5)  # 2 * (1/2)^2


def test_paired_bootstrap_ci_is_sane():
    """n = 400 paired outcomes: the CI holds the observed difference, is roughly symmetric, and its width
    matches the normal approximation 2 * 1.96 * sd(d) / sqrt(n) of the per-image differences d = b - a."""
    rng = np.random.default_rng(3)
    n = 400
    a_ok = rng.random(n) < 0.5
    b_ok = np.where(rng.random(n) < 0.7, a_ok, rng.random(n) < 0.6)  # correlated with A, slightly better
    idx = [f"i{i}" for i in range(n)]
    c = compare_outcomes(pd.DataFrame({"ok": a_ok}, index=idx), pd.DataFrame({"ok": b_ok}, index=idx),
                         n_resamples=4000, seed=1)
    d = 100.0 * (b_ok.astype(float) - a_ok.astype(float))
    assert c.diff == pytest.approx(d.mean())
    assert c.diff_ci_low < c.diff < c.diff_ci_high
    left, right = c.diff - c.diff_ci_low, c.diff_ci_high - c.diff
    assert abs(left - right) < 0.25 * (left + right)
    normal_width = 2 * 1.959964 * d.std(ddof=1) / math.sqrt(n)
    assert (c.diff_ci_high - c.diff_ci_low) == pytest.approx(normal_width, rel=0.15)


def test_compare_input_errors(tmp_path):
    run_a = make_run(tmp_path, "a", "m", "cls", [patch_hit_result(np.ones(5, bool))])
    run_b = make_run(tmp_path, "b", "m", "last",
                     [patch_hit_result(np.ones(5, bool), ids=[f"other{i}" for i in range(5)])])
    res = runner.invoke(app, ["compare", str(run_a), str(run_a), "--metric", "patch_hit.top9"])
    assert res.exit_code == 2 and "patch_hit_rows.csv" in res.output and "top9" in res.output
    res = runner.invoke(app, ["compare", str(run_a), str(run_a), "--metric", "knn.k20.top1"])
    assert res.exit_code == 2 and "knn_rows.csv" in res.output
    res = runner.invoke(app, ["compare", str(run_a), str(run_a), "--metric", "patch_hit.score"])
    assert res.exit_code == 2 and "not boolean" in res.output
    with pytest.raises(InputError, match="share no image_id"):
        compare_runs(run_a, run_b, "patch_hit.top1")


def test_compare_carries_unit_and_direction(tmp_path):
    """compare.json says what the difference is in; a non-percentage metric is refused, not tested as hits."""
    hits = np.arange(40) % 2 == 0
    a = make_run(tmp_path, "a", "ViT_190k", "cls", [patch_hit_result(hits, fg_bg_gap=0.1)])
    b = make_run(tmp_path, "b", "ViT_190k", "last", [patch_hit_result(~hits, fg_bg_gap=0.2)])
    out = tmp_path / "cmp"
    res = runner.invoke(app, ["compare", str(a), str(b), "--output", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads((out / "compare.json").read_text())
    assert (got["unit"], got["direction"]) == ("percent", "higher")
    assert "percent, higher" in res.output
    # the rows carry fg_bg_gap per image (floats): the declared cosine unit stops it before any test
    rows = pd.read_csv(a / "patch_hit_rows.csv")
    rows["fg_bg_gap"] = "True"
    rows.to_csv(a / "patch_hit_rows.csv", index=False)
    rows_b = pd.read_csv(b / "patch_hit_rows.csv")
    rows_b["fg_bg_gap"] = "False"
    rows_b.to_csv(b / "patch_hit_rows.csv", index=False)
    with pytest.raises(InputError, match="patch_hit.fg_bg_gap is a cosine metric"):
        compare_runs(a, b, "patch_hit.fg_bg_gap")
    record = json.loads((b / "metrics.json").read_text())
    record["metrics"]["patch_hit.top1"]["direction"] = "lower"
    (b / "metrics.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="direction 'lower' but"):
        compare_runs(a, b, "patch_hit.top1")
