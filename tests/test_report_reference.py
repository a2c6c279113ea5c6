"""`report --reference paper`: published numbers matched on what a run recorded, never on file names."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from lastvit_eval.cli import app
from lastvit_eval.data.coco_subset import describe_image_list, read_image_list
from lastvit_eval.report.reference import load_reference

runner = CliRunner()


def _record(run_dir: Path, *, family: str, width: int, patch: int, metric: str, value: float,
            dataset: dict, pooling: str = "last-k1", name: str = "model.pth", arch_name: str = "vit",
            info: dict | None = None, registers: int = 0) -> None:
    run_dir.mkdir(parents=True)
    rec = {
        "schema_version": 2, "run": run_dir.name,
        "provenance": {
            "model": {"name": name, "source": f"/ckpt/{name}", "family": family,
                      "arch": {"family": family, "name": arch_name, "width": width, "patch_size": patch,
                               "num_registers": registers}},
            "pooling": {"name": pooling}, "dataset": dataset},
        "metrics": {metric: {"value": value, "ci_low": value - 1, "ci_high": value + 1, "n": 100,
                             "unit": "percent", "direction": "higher"}},
        "info": info or {},
    }
    (run_dir / "metrics.json").write_text(json.dumps(rec))


def test_shipped_table_holds_the_papers_numbers():
    ref = load_reference("paper")
    pib = ref[(ref.metric == "patch_hit.top1") & (ref.arch == "ViT-B/16")].set_index("supervision")
    assert pib.loc["label", "baseline"] == 42.7 and pib.loc["label", "last"] == 55.1
    assert pib.loc["dino", "last"] == 69.7 and pib.loc["clip", "baseline"] == 39.8
    corloc = ref[(ref.metric == "corloc.hit") & (ref.method == "lost")].set_index("dataset")["baseline"]
    assert corloc.to_dict() == {"voc07-trainval": 61.9, "voc12-trainval": 64.0, "coco20k": 50.7}
    assert set(ref[ref.claim == "pib-cnn"]["baseline"]) == {68.4, 71.1, 53.9}


def test_report_puts_published_values_beside_matching_runs(tmp_path: Path):
    runs = tmp_path / "runs"
    imagenet = {"name": "val", "test": "/data/imagenet/val", "classes": 1000}
    _record(runs / "tv-last", family="torchvision", width=768, patch=16, metric="patch_hit.top1", value=54.0,
            dataset=imagenet, name="ViT_190k.pth", arch_name="vit_b_16")
    _record(runs / "dino-lost", family="dino", width=384, patch=16, metric="corloc.hit", value=60.0,
            dataset={"name": "VOC2007", "test": "/data/VOCdevkit/VOC2007/ImageSets/Main/trainval.txt"},
            info={"corloc": {"method": "lost"}})
    _record(runs / "subset", family="torchvision", width=768, patch=16, metric="patch_hit.top1", value=50.0,
            dataset={"name": "val100", "test": "/data/in100/val", "classes": 100})  # not the published split
    _record(runs / "reg", family="torchvision", width=768, patch=16, metric="patch_hit.top1", value=41.0,
            dataset=imagenet, registers=4, name="reg.pth")
    voc12_seg = {"name": "VOC2012", "test": "/data/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"}
    _record(runs / "dino-seg-mean", family="dino", width=384, patch=16, metric="coarse_seg.mean.miou", value=50.0,
            dataset=voc12_seg, info={"coarse-seg": {"thresholds": ["mean"]}})
    _record(runs / "dino-seg-trainval", family="dino", width=384, patch=16, metric="coarse_seg.otsu.miou",
            value=50.0, dataset={"name": "VOC2012",
                                 "test": "/data/VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"})
    coco = "/data/coco/instances_train2014.json"
    _record(runs / "coco20k-lost", family="dino", width=384, patch=16, metric="corloc.hit", value=49.0,
            dataset={"name": "coco", "test": f"{coco} (coco20k)",
                     "image_list": describe_image_list("coco20k", read_image_list("coco20k"))},
            info={"corloc": {"method": "lost"}})
    small = tmp_path / "coco_20k_first2.txt"
    small.write_text("560992\n396626\n")
    _record(runs / "coco-custom", family="dino", width=384, patch=16, metric="corloc.hit", value=49.0,
            dataset={"name": "coco", "test": f"{coco} ({small})",
                     "image_list": describe_image_list(small, read_image_list(small))},
            info={"corloc": {"method": "lost"}})
    out = tmp_path / "report"
    res = runner.invoke(app, ["report", str(runs), "-o", str(out), "--reference", "paper"])
    assert res.exit_code == 0, res.output
    got = pd.read_csv(out / "reference.csv").set_index("run")
    assert set(got.index) == {"tv-last", "dino-lost", "reg", "dino-seg-mean", "coco20k-lost"}
    # coarse-seg: any threshold's miou against the voc12 (Segmentation val) row of DINO ViT-S/16
    assert (got.loc["dino-seg-mean", "paper_baseline"], got.loc["dino-seg-mean", "paper_last"]) == (47.7, 55.1)
    assert got.loc["dino-seg-mean", "paper_dataset"] == "voc12-val"
    assert got.loc["dino-seg-mean", "metric"] == "coarse_seg.mean.miou"
    # COCO20k only for LOST's list (content); a custom list named like it is not matched
    assert (got.loc["coco20k-lost", "paper_baseline"], got.loc["coco20k-lost", "paper_dataset"]) == (50.7, "coco20k")
    assert (got.loc["tv-last", "paper_baseline"], got.loc["tv-last", "paper_last"]) == (42.7, 55.1)
    assert got.loc["tv-last", "paper_model"] == "label ViT-B/16"
    assert (got.loc["dino-lost", "paper_baseline"], got.loc["dino-lost", "paper_last"]) == (61.9, 64.4)
    assert got.loc["dino-lost", "paper_dataset"] == "voc07-trainval"
    assert got.loc["reg", "paper_baseline"] == 41.5 and pd.isna(got.loc["reg", "paper_last"])
    md = (out / "reference.md").read_text()
    assert "42.7 (CLS)" in md and "55.1" in md
    # the gate's baseline file is untouched by --reference
    assert list(pd.read_csv(out / "report.csv").columns)[:5] == ["checkpoint", "pooling", "dataset", "run", "metric"]


def test_bad_reference_file_is_one_line_before_anything_is_written(tmp_path: Path):
    runs = tmp_path / "runs"
    _record(runs / "a", family="torchvision", width=768, patch=16, metric="patch_hit.top1", value=1.0,
            dataset={"name": "x"})
    bad = tmp_path / "ref.csv"
    bad.write_text("metric,value\npatch_hit.top1,1\n")
    out = tmp_path / "out"
    res = runner.invoke(app, ["report", str(runs), "-o", str(out), "--reference", str(bad)])
    assert res.exit_code == 2
    assert "lacks columns" in res.output and str(bad) in res.output
    assert not out.exists()
    res = runner.invoke(app, ["report", str(runs), "-o", str(out), "--reference", "papr"])
    assert res.exit_code == 2 and "neither 'paper' nor an existing CSV" in res.output
