"""`report --paper-table pib`: the paper's PiB table (supervision x Baseline / + Register / LAST / ResNet)
filled from what runs recorded: two kinds of real runs (a tiny torchvision ViT file, a ResNet-18 file) and
records made from a real one with the provenance other families write."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from torchvision.models import resnet18
from typer.testing import CliRunner

from lastvit_eval.app import app

runner = CliRunner()


def _run(args: list[str]) -> None:
    r = runner.invoke(app, ["run", "-e", "patch-hit", *args, "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output + (r.stderr or "")


def _variant(real: Path, dest: Path, run: str, *, model: dict, arch: dict, pooling: dict, value: float,
             dataset: dict | None = None, metric: str = "patch_hit.top1") -> None:
    """A real run's metrics.json with another model's provenance (what that loader records) and value."""
    rec = json.loads((real / "metrics.json").read_text())
    rec["run"] = run
    rec["provenance"]["model"].update(model)
    rec["provenance"]["model"]["arch"].update(arch)
    rec["provenance"]["pooling"] = pooling
    if dataset is not None:
        rec["provenance"]["dataset"].update(dataset)
    m = rec["metrics"].pop("patch_hit.top1")
    rec["metrics"] = {metric: {**m, "value": value, "ci_low": value - 2.0, "ci_high": value + 2.0}}
    (dest / run).mkdir(parents=True)
    (dest / run / "metrics.json").write_text(json.dumps(rec))


@pytest.fixture
def runs(imagenet_root, detectron2_ckpt, tmp_path) -> Path:
    root = tmp_path / "runs"
    _run(["-c", str(detectron2_ckpt), "-r", str(imagenet_root), "-p", "cls", "-p", "last", "-o", str(root / "vit")])
    torch.manual_seed(0)
    rn = tmp_path / "rn18.pth"
    torch.save(resnet18(weights=None).eval().state_dict(), rn)
    _run(["-c", str(rn), "-r", str(imagenet_root), "-p", "gap", "-p", "last", "-o", str(root / "rn18")])
    real = root / "vit" / "cls"
    imagenet = {"name": "val", "classes": 1000}
    cls, last = {"name": "cls", "kind": "cls"}, {"name": "last-k1", "kind": "last", "topk": 1}
    _variant(real, root, "clip-b16-cls", model={"name": "openclip:ViT-B-16/openai", "family": "openclip"},
             arch={"family": "openclip", "name": "ViT-B-16", "width": 768, "patch_size": 16, "image_size": 224},
             pooling=cls, value=40.25, dataset=imagenet)
    for run, value in (("clip-a-last", 50.0), ("clip-b-last", 51.0)):  # two runs claim one cell
        _variant(real, root, run, model={"name": f"{run}.pt", "family": "openclip"},
                 arch={"family": "openclip", "width": 768, "patch_size": 16}, pooling=last, value=value,
                 dataset=imagenet)
    reg = {"name": "dinov2_vits14_reg4_pretrain.pth", "family": "dinov2"}
    reg_arch = {"family": "dinov2", "name": "dinov2_vits14_reg4", "width": 384, "patch_size": 14,
                "num_prefix_tokens": 5, "num_registers": 4}
    _variant(real, root, "dinov2-reg-cls", model=reg, arch=reg_arch, pooling=cls, value=61.0)
    _variant(real, root, "dinov2-reg-last", model=reg, arch=reg_arch, pooling=last, value=62.0)
    _variant(real, root, "vit-gap", model={}, arch={}, pooling={"name": "gap", "kind": "gap"}, value=30.0)
    _variant(real, root, "knn-only", model={}, arch={}, pooling=cls, value=70.0, metric="knn.k20.top1")
    return root


def test_pib_table_cells_from_recorded_provenance(runs, tmp_path):
    out = tmp_path / "report"
    r = runner.invoke(app, ["report", str(runs), "-o", str(out), "--paper-table", "pib"])
    assert r.exit_code == 0, r.output + (r.stderr or "")
    vit = {p: json.loads((runs / "vit" / p / "metrics.json").read_text())["metrics"]["patch_hit.top1"]
           for p in ("cls", "last-k1")}
    rn = json.loads((runs / "rn18" / "gap" / "metrics.json").read_text())["metrics"]["patch_hit.top1"]

    df = pd.read_csv(out / "pib_table.csv")
    text = ["supervision", "column", "run", "note"]
    df[text] = df[text].fillna("")
    cells = df[df["column"] != ""].set_index(["supervision", "column"])
    assert len(cells) == 12  # every cell of the paper's table, measured or not
    assert cells.loc[("label", "Baseline"), "run"] == "vit-cls"
    assert cells.loc[("label", "Baseline"), "value"] == pytest.approx(vit["cls"]["value"], abs=1e-4)
    assert cells.loc[("label", "LAST"), "value"] == pytest.approx(vit["last-k1"]["value"], abs=1e-4)
    assert cells.loc[("label", "ResNet"), "run"] == "rn18-gap"
    assert cells.loc[("label", "ResNet"), "value"] == pytest.approx(rn["value"], abs=1e-4)
    assert cells.loc[("clip", "Baseline"), "run"] == "clip-b16-cls"
    assert cells.loc[("clip", "Baseline"), "note"] == ""  # ViT-B/16 on the 1000-class val: the paper's setting
    assert cells.loc[("dino", "+ Register"), "run"] == "dinov2-reg-cls"
    assert cells.loc[("label", "+ Register"), "run"] == ""  # nothing measured there
    assert cells.loc[("clip", "LAST"), "run"] == ""  # claimed twice: left empty, never a pick
    expected_paper = {("label", "Baseline"): 42.7, ("label", "LAST"): 55.1, ("dino", "Baseline"): 44.5,
                      ("dino", "LAST"): 69.7, ("clip", "Baseline"): 39.8, ("clip", "LAST"): 50.1,
                      ("label", "+ Register"): 41.5, ("label", "ResNet"): 68.4, ("dino", "ResNet"): 71.1,
                      ("clip", "ResNet"): 53.9}
    for key, row in cells.iterrows():
        assert (pd.isna(row["paper"]) and key not in expected_paper) or row["paper"] == expected_paper[key], key
    notes = cells["note"]
    assert "ViT-Ti/8, the paper's is ViT-B/16; dataset imagenet (4 classes)" in notes[("label", "Baseline")]
    assert "ResNet-18, the paper's is ResNet-50" in notes[("label", "ResNet")]
    assert "ViT-S/14+reg, the paper's is ViT-B/16+reg" in notes[("dino", "+ Register")]

    unplaced = df[df["column"] == ""].set_index("run")["note"]
    assert set(unplaced.index) == {"vit-gap", "knn-only", "dinov2-reg-last", "rn18-last-k1", "clip-a-last",
                                   "clip-b-last"}
    assert "Baseline is cls pooling" in unplaced["vit-gap"]
    assert "no patch_hit.top1" in unplaced["knn-only"]
    assert "4 registers with last pooling" in unplaced["dinov2-reg-last"]
    assert "a CNN with last pooling" in unplaced["rn18-last-k1"]
    assert "2 runs for CLIP / LAST (clip-a-last, clip-b-last)" in unplaced["clip-a-last"]

    md = (out / "pib_table.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| CLIP |"))
    assert row.startswith("| CLIP | 40.2 [38.2, 42.2] (paper 39.8) | — (paper —) | — (paper 50.1) | — (paper 53.9) |")
    lab = next(ln for ln in md.splitlines() if ln.startswith("| label-supervised |"))
    v = vit["cls"]
    assert f"| {v['value']:.1f} [{v['ci_low']:.1f}, {v['ci_high']:.1f}] (paper 42.7) [1] |" in lab
    assert "Not placed:" in md and "- vit-gap (" in md
    assert "point-in-box top-1" in r.output and "not placed: knn-only" in r.output


def test_paper_table_name_is_checked_before_anything_is_written(tmp_path):
    # checked before the runs are read (commands/report.py), so no runs need to be made for it
    out = tmp_path / "report"
    r = runner.invoke(app, ["report", str(tmp_path), "-o", str(out), "--paper-table", "corloc"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "--paper-table 'corloc'" in lines[0] and "'pib'" in lines[0]
    assert not out.exists()


def test_a_main_dino_resnet_is_placed_in_the_dino_row():
    """The row comes from the recorded key mapping (the loader took the teacher's backbone), not the file name."""
    from lastvit_eval.report.pib_table import place

    def record(steps):
        arch = {"family": "resnet", "name": "resnet50", "width": 2048, "patch_size": 32, "num_prefix_tokens": 0}
        return {"run": "r", "provenance": {"model": {"name": "checkpoint0100.pth", "family": "resnet", "arch": arch,
                                                     "key_mapping": steps},
                                           "pooling": {"name": "gap", "kind": "gap"}, "dataset": {}},
                "metrics": {"patch_hit.top1": {"value": 70.0}}}

    teacher = place(record(["took checkpoint['teacher'] (default; --checkpoint-key student for the student)",
                            "took keys under 'backbone.' and stripped it"]))
    assert (teacher.supervision, teacher.column) == ("dino", "ResNet")
    plain = place(record([]))
    assert (plain.supervision, plain.column) == ("label", "ResNet")


def test_an_mae_encoder_is_not_placed_in_the_label_row():
    """An MAE encoder (recorded by its loader) is self-supervised: the paper's table has no row for it, so it is
    listed as not placed, never put in the label-supervised row."""
    from lastvit_eval.report.pib_table import pib_table

    arch = {"family": "timm", "name": "vit_base_patch16_224", "width": 768, "patch_size": 16, "num_prefix_tokens": 1}
    steps = ["preprocessing: MAE's evaluation transform (resize 256 bicubic, crop 224, ImageNet mean / std)"]
    rec = {"run": "mae", "provenance": {"model": {"name": "mae_pretrain_vit_base.pth", "family": "timm",
                                                  "arch": arch, "key_mapping": steps},
                                        "pooling": {"name": "cls", "kind": "cls"}, "dataset": {}},
           "metrics": {"patch_hit.top1": {"value": 50.0}}}
    table = pib_table([rec])
    assert table.cells == {}
    (line,) = table.unplaced_lines()
    assert "mae" in line and "rows for label-supervised, DINO, CLIP models only" in line, line
