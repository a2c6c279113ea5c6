"""`lastvit-eval zero-shot-seg` end to end on a VOC-layout fixture and a random-init open_clip checkpoint
file; bad inputs answer with one line and exit code 2 before any forward pass."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from PIL import Image
from test_zero_shot_seg import brute_force, decode, make_layout
from typer.testing import CliRunner

from lastvit_eval.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def clip224(tmp_path_factory):
    """224 px, patch 32: the protocol's 224-pixel windows fit the tower (a 7 x 7 grid), and it stays fast."""
    torch.manual_seed(0)
    m = CLIP(32, vision_cfg=CLIPVisionCfg(layers=2, width=192, head_width=64, patch_size=32, image_size=224),
             text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "ln_" in name or "proj" in name:
                p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path_factory.mktemp("ckpt") / "clip224.pt"
    torch.save(m.state_dict(), path)
    return path


@pytest.fixture
def voc(tmp_path):
    pairs = make_layout(tmp_path / "VOC", "voc21", n=3, size=(30, 40))
    template = tmp_path / "templates.txt"
    template.write_text("a photo of a {c}.\n")
    return tmp_path / "VOC", pairs, template


@pytest.fixture
def no_forward(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a forward pass ran before the input was checked")

    monkeypatch.setattr("lastvit_eval.engine.dense_forward.segment", boom)


def test_cli_end_to_end_writes_metrics_predictions_and_picture(voc, clip224, tmp_path):
    root, pairs, template = voc
    out, preds = tmp_path / "out", tmp_path / "preds"
    r = runner.invoke(app, ["zero-shot-seg", "-c", str(clip224), "--seg-dataset", "voc21", "--seg-root", str(root),
                            "--templates", str(template), "--save-predictions", str(preds), "-o", str(out),
                            "--no-progress", "--device", "cpu", "--dtype", "bf16", "--batch-size", "4"])
    assert r.exit_code == 0, r.output
    record = json.loads((out / "cls" / "metrics.json").read_text())
    m = record["metrics"]["zero_shot_seg.miou"]
    assert m["unit"] == "percent" and m["direction"] == "higher" and m["n"] == 3
    labels = [decode(np.asarray(Image.open(lab)), False) for _, lab in pairs]
    written = [np.asarray(Image.open(preds / lab.name)).astype(np.int64) for _, lab in pairs]
    assert [p.shape for p in written] == [g.shape for g in labels]
    miou, acc = brute_force(written, labels, 21)
    assert m["value"] == pytest.approx(miou, abs=1e-6)
    assert record["metrics"]["zero_shot_seg.pixel_acc"]["value"] == pytest.approx(acc, abs=1e-6)
    assert m["ci_low"] <= m["value"] <= m["ci_high"]
    assert (out / "cls" / "zero_shot_seg_examples.png").stat().st_size > 0
    per_class = (out / "cls" / "zero_shot_seg_per_class.csv").read_text().splitlines()
    assert per_class[0].startswith("class_id,class,iou") and len(per_class) == 22
    assert per_class[1].startswith("0,background,")
    plan = json.loads((out / "plan.json").read_text())
    assert plan["options"]["zero-shot-seg"]["dense"] == "plain"
    assert record["provenance"]["dataset"]["name"] == "voc21" and record["provenance"]["dataset"]["classes"] == 21


def test_cli_dense_modes_and_bg_threshold_change_the_prediction(voc, clip224, tmp_path, monkeypatch):
    """--dense reaches segmentation.dense.dense_embeddings as that mode (each mode is checked against open_clip's
    own modules in test_seg_dense.py and test_zero_shot_seg.py); the three modes predict differently."""
    import lastvit_eval.engine.dense_forward as df

    modes, real = [], df.dense_embeddings

    def spy(visual, windows, mode="plain"):
        modes.append(mode)
        return real(visual, windows, mode)

    monkeypatch.setattr(df, "dense_embeddings", spy)
    root, pairs, template = voc
    maps = {}
    for args in (["--dense", "plain"], ["--dense", "maskclip"], ["--dense", "value"], ["--bg-threshold", "0.99"]):
        modes.clear()
        preds = tmp_path / "p" / "_".join(args).strip("-")
        r = runner.invoke(app, ["zero-shot-seg", "-c", str(clip224), "--seg-dataset", "voc21", "--seg-root", str(root),
                                "--templates", str(template), "--save-predictions", str(preds), "--max-images", "1",
                                "-o", str(tmp_path / "o" / preds.name), "--no-progress", "--no-cache", *args])
        assert r.exit_code == 0, r.output
        assert len(list(preds.glob("*.png"))) == 1  # --max-images
        maps[args[1]] = np.asarray(Image.open(preds / pairs[0][1].name))
        assert modes and set(modes) == {args[1] if args[0] == "--dense" else "plain"}, modes
        plan = json.loads((tmp_path / "o" / preds.name / "plan.json").read_text())
        assert plan["options"]["zero-shot-seg"]["dense"] == (args[1] if args[0] == "--dense" else "plain")
    assert not np.array_equal(maps["plain"], maps["maskclip"])
    assert not np.array_equal(maps["value"], maps["maskclip"]) and not np.array_equal(maps["value"], maps["plain"])
    # a higher threshold only turns pixels into background (class 0); the others keep their class
    kept = maps["0.99"] != 0
    assert (maps["0.99"][kept] == maps["plain"][kept]).all()
    assert (maps["0.99"] == 0).sum() > (maps["plain"] == 0).sum()


@pytest.mark.parametrize("args,message", [
    (["--seg-root", "{missing}"], "--seg-root does not exist"),
    (["--seg-dataset", "voc2000"], "unknown segmentation dataset 'voc2000'"),
    (["--dense", "sclip"], "--dense 'sclip': use plain, maskclip or value"),
    (["--seg-dataset", "voc20", "--bg-threshold", "0.2"], "voc20 has no background class"),
    (["--save-predictions", "{file}"], "output folder is a file"),
    (["--seg-root", "{empty}"], "no JPEGImages/ folder"),
])
def test_bad_inputs_exit_2_with_one_line(voc, clip224, tmp_path, no_forward, args, message):
    root, _, template = voc
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty").mkdir()
    fill = {"{missing}": str(tmp_path / "nowhere"), "{file}": str(tmp_path / "a_file"), "{empty}": str(tmp_path / "empty")}
    args = [fill.get(a, a) for a in args]
    base = {"--seg-dataset": "voc21", "--seg-root": str(root)}
    for k, v in base.items():
        if k not in args:
            args = [k, v, *args]
    r = runner.invoke(app, ["zero-shot-seg", "-c", str(clip224), "--templates", str(template), "--no-cache",
                            "-o", str(tmp_path / "out"), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_missing_dataset_options_exit_2(clip224, tmp_path, no_forward):
    r = runner.invoke(app, ["zero-shot-seg", "-c", str(clip224), "--seg-dataset", "voc21", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "give both --seg-dataset NAME and --seg-root DIR" in r.output, r.output


def test_non_clip_checkpoint_and_mismatched_label_exit_2(voc, clip224, detectron2_ckpt, tmp_path, no_forward):
    root, pairs, template = voc
    r = runner.invoke(app, ["zero-shot-seg", "-c", str(detectron2_ckpt), "--seg-dataset", "voc21", "--seg-root",
                            str(root), "--templates", str(template), "-o", str(tmp_path / "o1")])
    assert r.exit_code == 2 and "needs a CLIP checkpoint with a text tower" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    lab = pairs[1][1]
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(lab)  # label no longer the image's size
    r = runner.invoke(app, ["zero-shot-seg", "-c", str(clip224), "--seg-dataset", "voc21", "--seg-root", str(root),
                            "--templates", str(template), "-o", str(tmp_path / "o2")])
    assert r.exit_code == 2 and f"{lab}: label is 5x5 but its image" in r.output, r.output


def test_dry_run_says_dense_outputs_are_not_cached(voc, clip224, tmp_path, no_forward):
    root, _, template = voc
    r = runner.invoke(app, ["zero-shot-seg", "-c", str(clip224), "--seg-dataset", "voc21", "--seg-root", str(root),
                            "--templates", str(template), "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output[r.output.index("{"):])
    assert plan["splits"]["test"]["images"] == 3 and plan["forward_passes"] == 3
    assert "not cached" in plan["splits"]["test"]["note"]


def test_run_command_takes_the_evaluator_too(voc, clip224, tmp_path):
    root, _, template = voc
    r = runner.invoke(app, ["run", "-e", "zero-shot-seg", "-c", str(clip224), "--seg-dataset", "voc21", "--seg-root", str(root), "--templates", str(template),
                            "--limit", "1", "-p", "cls", "-o", str(tmp_path / "o"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "zero_shot_seg.miou" in json.loads((tmp_path / "o" / "cls" / "metrics.json").read_text())["metrics"]


VOC21_NAMES = ["background", "aeroplane", "bicycle", "bird", "ship", "bottle", "bus", "car", "cat", "chair", "cow",
               "table", "dog", "horse", "motorbike", "person, people", "potted plant", "sheep", "sofa", "train",
               "television monitor, tv monitor"]


def test_cli_classnames_file_with_synonyms_sets_the_queries(voc, clip224, tmp_path):
    """--classnames: one class a line, synonyms comma-separated (assets/seg_cls_voc21.txt's format); each
    synonym is one text query, the classes stay the dataset's 21, named by their first synonym."""
    root, pairs, template = voc
    names = tmp_path / "voc21_names.txt"
    names.write_text("\n".join(VOC21_NAMES) + "\n")
    out = tmp_path / "out"
    r = runner.invoke(app, ["zero-shot-seg", "-c", str(clip224), "--seg-dataset", "voc21", "--seg-root", str(root),
                            "--classnames", str(names), "--templates", str(template), "--max-images", "1",
                            "-o", str(out), "--no-progress", "--no-cache"])
    assert r.exit_code == 0, r.output
    info = json.loads((out / "cls" / "metrics.json").read_text())["info"]["zero-shot-seg"]
    assert info["queries"] == 23  # 21 classes, two of them with a synonym
    assert info["text_classifier"]["classes"] == 23 and info["text_classifier"]["templates"] == 1
    assert info["text_classifier"]["prompts"].startswith(f"--classnames {names};")
    per_class = (out / "cls" / "zero_shot_seg_per_class.csv").read_text().splitlines()
    assert len(per_class) == 22 and per_class[16].startswith("15,person,") and per_class[21].startswith(
        "20,television monitor,")


@pytest.mark.parametrize("lines,message", [
    (VOC21_NAMES[:-1], "20 classes, voc21 has 21"),
    ([*VOC21_NAMES[:15], "person, , people", *VOC21_NAMES[16:]], "line 16 has an empty class name"),
])
def test_cli_malformed_classnames_exit_2_before_any_forward(voc, clip224, tmp_path, no_forward, monkeypatch, lines,
                                                            message):
    def no_text(*a, **k):
        raise AssertionError("the text tower ran before the class names were checked")

    monkeypatch.setattr("lastvit_eval.models.clip_text.build_classifier", no_text)
    root, _, template = voc
    names = tmp_path / "bad_names.txt"
    names.write_text("\n".join(lines) + "\n")
    r = runner.invoke(app, ["zero-shot-seg", "-c", str(clip224), "--seg-dataset", "voc21", "--seg-root", str(root),
                            "--classnames", str(names), "--templates", str(template), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("Error:") and len(r.output.strip().splitlines()) == 1, r.output
    assert str(names) in r.output and message in r.output, r.output
