"""`run`: several evaluators over one forward pass per image set; single-evaluator shortcuts."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from conftest import write_train
from typer.testing import CliRunner

from lastvit_eval.app import app
from lastvit_eval.engine import extract as extract_mod

runner = CliRunner()


@pytest.fixture
def with_train(imagenet_root):
    return write_train(imagenet_root, 10)


def test_run_all_evaluators_one_pass_per_split(with_train, detectron2_ckpt, tmp_path, monkeypatch):
    calls = []
    real = extract_mod.extract

    def spy(model, paths, request, engine, **kw):
        calls.append((len(paths), sorted(request.taps)))
        return real(model, paths, request, engine, **kw)

    monkeypatch.setattr("lastvit_eval.pipeline.extract", spy)
    out = tmp_path / "run"
    cmap = tmp_path / "map.txt"  # the tiny 10-way head: say which output each wnid is
    cmap.write_text("".join(f"{w} {i + 3}\n" for i, w in enumerate(sorted(p.name for p in (with_train / "val").iterdir()))))
    r = runner.invoke(app, ["run", "-c", str(detectron2_ckpt), "-r", str(with_train), "-o", str(out),
                            "-e", "patch-hit,knn,linear-probe,classify", "-p", "last", "-p", "cls", "--ks", "1,3",
                            "--class-map", str(cmap), "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output + (r.stderr or "")
    # one pass over val (all taps) and one over train (pooled), for both poolings together
    assert calls == [(8, ["logits", "patch_scores", "pooled"]), (40, ["pooled"])]
    for pooling in ("last-k1", "cls"):
        rec = json.loads((out / pooling / "metrics.json").read_text())
        keys = set(rec["metrics"])
        assert {"patch_hit.top1", "knn.k1.top1", "knn.k3.top5", "linear_probe.top1", "classify.top1"} <= keys
        assert rec["provenance"]["pooling"]["name"] == pooling
        assert rec["info"]["patch-hit"]["evaluated"] == 5
        assert len(pd.read_csv(out / pooling / "knn_rows.csv")) == 8
        assert rec["info"]["classify"]["class_map"]["source"].startswith("--class-map")
        assert set(pd.read_csv(out / pooling / "classify_rows.csv")["label"]) == {3, 4, 5, 6}
        assert rec["metrics"]["patch_hit.fg_bg_gap"]["unit"] == "cosine"


def test_patch_hit_in_run_equals_patch_hit_command(with_train, detectron2_ckpt, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert runner.invoke(app, ["run", "-c", str(detectron2_ckpt), "-r", str(with_train), "-o", str(a), "-e",
                               "patch-hit", "-p", "cls", "--workers", "0", "--no-progress"]).exit_code == 0
    assert runner.invoke(app, ["patch-hit", "-c", str(detectron2_ckpt), "-r", str(with_train), "-o", str(b), "-p",
                               "cls", "--workers", "0", "--no-progress"]).exit_code == 0
    ra, rb = pd.read_csv(a / "cls" / "patch_hit_rows.csv"), pd.read_csv(b / "cls" / "patch_hit_rows.csv")
    pd.testing.assert_frame_equal(ra, rb, check_exact=False, atol=1e-6)


def test_knn_shortcut_and_errors(with_train, detectron2_ckpt, tmp_path):
    r = runner.invoke(app, ["knn", "-c", str(detectron2_ckpt), "-r", str(with_train), "-o", str(tmp_path / "k"),
                            "--ks", "2", "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output + (r.stderr or "")
    shutil.rmtree(with_train / "train")
    r = runner.invoke(app, ["knn", "-c", str(detectron2_ckpt), "-r", str(with_train), "--no-progress"])
    assert r.exit_code == 2 and "training set" in (r.stderr or r.output)
    r = runner.invoke(app, ["run", "-c", str(detectron2_ckpt), "-r", str(with_train), "-e", "bogus"])
    assert r.exit_code == 2 and "unknown evaluator" in (r.stderr or r.output)


def test_evaluators_on_feature_files_match_the_images_path(with_train, detectron2_ckpt, tmp_path):
    """extract -> knn --train-features/--test-features equals knn run from the checkpoint and images."""
    for split in ("train", "val"):
        r = runner.invoke(app, ["extract", "-c", str(detectron2_ckpt), "-r", str(with_train), "--split", split,
                                "-p", "cls", "--output", str(tmp_path / f"{split}.npz"), "--workers", "0",
                                "--no-progress"])
        assert r.exit_code == 0, r.output + (r.stderr or "")
    r = runner.invoke(app, ["knn", "--train-features", str(tmp_path / "train.npz"), "--test-features",
                            str(tmp_path / "val.npz"), "--ks", "1,3", "-o", str(tmp_path / "from_files")])
    assert r.exit_code == 0, r.output + (r.stderr or "")
    r = runner.invoke(app, ["knn", "-c", str(detectron2_ckpt), "-r", str(with_train), "-p", "cls", "--ks", "1,3",
                            "-o", str(tmp_path / "from_images"), "--workers", "0", "--no-progress"])
    assert r.exit_code == 0
    a = json.loads((tmp_path / "from_files" / "cls" / "metrics.json").read_text())["metrics"]
    b = json.loads((tmp_path / "from_images" / "cls" / "metrics.json").read_text())["metrics"]
    assert {k: v["value"] for k, v in a.items()} == {k: v["value"] for k, v in b.items()}
    r = runner.invoke(app, ["knn", "--test-features", str(tmp_path / "val.npz")])
    assert r.exit_code == 2 and "--train-features" in (r.stderr or r.output)


def test_linear_probe_options_reach_the_probe(with_train, detectron2_ckpt, tmp_path):
    r = runner.invoke(app, ["run", "-c", str(detectron2_ckpt), "-r", str(with_train), "-o", str(tmp_path / "a"),
                            "-e", "linear-probe", "-p", "cls", "--weight-decays", "1e-2,1e-3", "--holdout-fraction",
                            "0.2", "--probe-precision", "fp32", "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output + (r.stderr or "")
    info = json.loads((tmp_path / "a" / "cls" / "metrics.json").read_text())["info"]["linear-probe"]
    assert [row["weight_decay"] for row in info["selection"]] == [1e-2, 1e-3]
    assert info["chosen_weight_decay"] in (1e-2, 1e-3)
    assert (info["precision"], info["holdout_fraction"], info["solver"]) == ("fp32", 0.2, "lbfgs")

    r = runner.invoke(app, ["extract", "-c", str(detectron2_ckpt), "-r", str(with_train), "--split", "train",
                            "-p", "cls", "--output", str(tmp_path / "train.npz"), "--workers", "0", "--no-progress"])
    assert r.exit_code == 0
    files = ["--train-features", str(tmp_path / "train.npz"), "--test-features", str(tmp_path / "train.npz")]
    r = runner.invoke(app, ["linear-probe", *files, "--solver", "adam", "--lrs", "1e-2", "--weight-decays", "0",
                            "-o", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output + (r.stderr or "")
    info = json.loads((tmp_path / "b" / "cls" / "metrics.json").read_text())["info"]["linear-probe"]
    assert (info["solver"], info["chosen_lr"], info["chosen_weight_decay"], info["n_candidates"]) == \
        ("adam", 1e-2, 0.0, 1)


@pytest.mark.parametrize("args, message", [
    (["--weight-decays", "1e-3,abc"], "--weight-decays"),
    (["--weight-decays", "-1"], "--weight-decays"),
    (["--solver", "sgd"], "--solver"),
    (["--probe-precision", "fp8"], "--probe-precision"),
    (["--lrs", "1e-3"], "--lrs applies to --solver adam only"),
    (["--holdout-fraction", "1.5"], "--holdout-fraction"),
])
def test_linear_probe_bad_options(args, message, tmp_path):
    import numpy as np

    from lastvit_eval.features_io import FeatureSet, save_features

    rng = np.random.default_rng(0)
    fs = FeatureSet({"pooled/cls": rng.normal(size=(12, 4)).astype(np.float32)}, np.arange(12) % 3,
                    [f"i{i}" for i in range(12)], classes=["a", "b", "c"])
    path = save_features(tmp_path / "f.npz", fs)
    r = runner.invoke(app, ["linear-probe", "--train-features", str(path), "--test-features", str(path),
                            "-o", str(tmp_path / "out"), *args])
    assert r.exit_code == 2 and message in (r.stderr or r.output), r.output + (r.stderr or "")
