"""inspect, extract and zero-shot through Typer's CliRunner on real files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_models_dino import main_dino
from tiny_models import tiny_clip, tiny_timm
from typer.testing import CliRunner

from lastvit_eval.app import app
from lastvit_eval.engine.dataset import load_rgb
from lastvit_eval.features_io import load_features
from lastvit_eval.models import LoadOptions, load_model

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def dino_ckpt(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save(main_dino(tiny_timm(seed=1), tiny_timm(seed=2)), path)
    return path


@pytest.fixture
def clip_ckpt(tmp_path):
    path = tmp_path / "epoch_10.pt"
    ref = tiny_clip(seed=3)
    torch.save({"epoch": 10, "name": "run-model_tiny-test", "state_dict": {"module." + k: v for k, v in
                                                                          ref.state_dict().items()}}, path)
    return path


def test_inspect_json(dino_ckpt):
    r = run("inspect", dino_ckpt)
    assert r.exit_code == 2 and "--trust-checkpoint" in r.output
    r = run("inspect", dino_ckpt, "--trust-checkpoint", "--checkpoint-key", "student", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["family"] == "dino" and info["arch"]["width"] == 192 and info["arch"]["depth"] == 2
    assert info["params"] == sum(p.numel() for p in tiny_timm().parameters())
    assert "took checkpoint['student'] (--checkpoint-key)" in info["key_mapping"]
    assert "stripped prefix 'module.'" in info["key_mapping"]
    assert any(k.startswith("head.") for k in info["dropped"]) and info["missing"] == info["unexpected"] == []
    assert info["transform"]["interpolation"] == "bicubic" and len(info["sha256"]) == 64
    r = run("inspect", dino_ckpt, "--trust-checkpoint")  # the Rich table
    assert r.exit_code == 0 and "main_dino" in r.output


def test_inspect_clip_reports_activation(clip_ckpt):
    r = run("inspect", clip_ckpt, "--json", "--quick-gelu")
    info = json.loads(r.output)
    assert info["family"] == "openclip" and info["arch"]["embed_dim"] == 32 and info["details"]["quick_gelu"]
    assert "activation: QuickGELU (--quick-gelu)" in info["key_mapping"]


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_extract_clip(imagenet_root, clip_ckpt, tmp_path, suffix):
    out = tmp_path / f"feats{suffix}"
    r = run("extract", "-c", clip_ckpt, "-r", imagenet_root, "--output", out, "-p", "cls", "-p", "gap", "-p",
            "last:k=2", "--patch-tokens", "--workers", 0, "--batch-size", 3, "--no-progress")
    assert r.exit_code == 0, r.output
    fs = load_features(out)
    assert len(fs.image_ids) == 8 and fs.classes[0] == "n01440764" and list(fs.labels) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert set(fs.arrays) == {f"{t}/{p}" for t in ("pooled", "embedding") for p in ("cls", "gap", "last-k2")} | {
        "patch_tokens"}
    assert fs.arrays["patch_tokens"].dtype == np.float16 and fs.arrays["patch_tokens"].shape == (8, 16, 192)
    assert fs.arrays["embedding/cls"].shape == (8, 32)
    # rows equal the model's own forward on the same preprocessed image
    model = load_model(clip_ckpt, LoadOptions())
    path = next((imagenet_root / "val").rglob(f"{fs.image_ids[5]}.JPEG"))
    x = model.transform.normalize(model.transform.pixels(load_rgb(path))[None])
    with torch.no_grad():
        emb = model.backbone.clip.encode_image(x)[0].numpy()
    assert abs(fs.arrays["embedding/cls"][5] - emb).max() < 1e-4
    assert fs.meta["model"]["family"] == "openclip" and fs.meta["dataset"]["split"] == "val"


def test_extract_logits_for_a_classifier(imagenet_root, detectron2_ckpt, tmp_path):
    out = tmp_path / "f.npz"
    r = run("extract", "-c", detectron2_ckpt, "-r", imagenet_root, "--output", out, "--workers", 0, "--no-progress",
            "--limit", 5)
    assert r.exit_code == 0, r.output
    fs = load_features(out)
    assert {"logits/cls", "logits/gap", "logits/last-k1", "pooled/last-k1"} <= set(fs.arrays)
    assert not any(k.startswith("embedding/") for k in fs.arrays) and fs.arrays["logits/cls"].shape == (5, 10)
    r = run("extract", "-c", detectron2_ckpt, "-r", imagenet_root, "--output", tmp_path / "f.csv")
    assert r.exit_code == 2


def test_zero_shot_cli(imagenet_root, clip_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("LASTVIT_EVAL_CACHE", str(tmp_path / "cache"))
    names = tmp_path / "names.txt"
    names.write_text("tench\ngoldfish\ngreat white shark\ntiger shark\n")
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {c}.\nitap of the {}.\n")
    out = tmp_path / "zs"
    args = ["zero-shot", "-c", clip_ckpt, "-r", imagenet_root, "--classnames", names, "--templates", templates,
            "-o", out, "--pooling", "cls", "--workers", 0, "--no-progress"]
    r = run(*args)
    assert r.exit_code == 0, r.output
    out = out / "cls"
    rec = json.loads((out / "metrics.json").read_text())
    assert {"zero_shot.top1", "zero_shot.top4", "zero_shot.mean_per_class_recall"} <= set(rec["metrics"])
    info = rec["info"]["zero-shot"]
    assert info["images"] == 8 and info["classes"] == 4 and info["text_classifier"]["cache"] == "miss (written)"
    rows = pd.read_csv(out / "zero_shot_rows.csv")
    assert rows["top1"].mean() * 100 == pytest.approx(rec["metrics"]["zero_shot.top1"]["value"])
    assert rows["top4"].all()  # 4 classes: the label is always in the top 4
    r = run(*args[:-7], "-o", tmp_path / "zs2", "--pooling", "cls", "--workers", 0, "--no-progress")
    assert json.loads((tmp_path / "zs2" / "cls" / "metrics.json").read_text())["info"]["zero-shot"]["text_classifier"][
        "cache"] == "hit"


def test_zero_shot_default_imagenet_names(imagenet_root, clip_ckpt, tmp_path, monkeypatch):
    """Without --classnames: open_clip's 1000 ImageNet names; folder wnids map to their ImageNet index."""
    monkeypatch.setenv("LASTVIT_EVAL_CACHE", str(tmp_path / "cache"))
    templates = tmp_path / "t.txt"
    templates.write_text("a photo of a {c}.\n")
    out = tmp_path / "zs"
    r = run("zero-shot", "-c", clip_ckpt, "-r", imagenet_root, "--templates", templates, "-o", out, "--workers", 0,
            "--no-progress")
    assert r.exit_code == 0, r.output
    out = out / "last-k1"
    rows = pd.read_csv(out / "zero_shot_rows.csv")
    assert sorted(set(rows["label"])) == [0, 1, 2, 3]  # n01440764.. are the first ImageNet synsets
    assert set(rows["class"]) == {"tench", "goldfish", "great white shark", "tiger shark"}
    assert json.loads((out / "metrics.json").read_text())["info"]["zero-shot"]["classes"] == 1000


def test_zero_shot_errors(imagenet_root, clip_ckpt, dino_ckpt, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    r = run("zero-shot", "-c", clip_ckpt, "-r", imagenet_root, "--classnames", names, "-o", tmp_path / "x",
            "--workers", 0, "--no-progress")
    assert r.exit_code == 2 and "4 classes" in r.output and "lists 3" in r.output
    r = run("zero-shot", "-c", dino_ckpt, "--trust-checkpoint", "-r", imagenet_root, "-o", tmp_path / "y",
            "--workers", 0, "--no-progress")
    assert r.exit_code == 2 and "CLIP" in r.output
    bad = tmp_path / "t.txt"
    bad.write_text("no placeholder here\n")
    r = run("zero-shot", "-c", clip_ckpt, "-r", imagenet_root, "--templates", bad, "-o", tmp_path / "z")
    assert r.exit_code == 2 and "placeholder" in r.output
