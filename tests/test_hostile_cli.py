"""Hostile input through the CLI: each is one `Error:` line naming the file, exit code 2, and the results of an
earlier run and the feature store they share are byte-for-byte unchanged afterwards."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGES, tiny_vit, write_jpeg, write_voc_xml
from typer.testing import CliRunner

from lastvit_eval.app import app
from lastvit_eval.features_io import FeatureSet, save_features

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A dataset, a checkpoint, an earlier run's results and the feature store it filled."""
    base = tmp_path_factory.mktemp("hostile")
    root = base / "data"
    for n, (image_id, wnid, size, boxes) in enumerate(IMAGES):
        write_jpeg(root / "val" / wnid / f"{image_id}.JPEG", size, seed=n, box=boxes[0])
        write_voc_xml(root / "bbox" / f"{image_id}.xml", image_id, size, boxes, wnid)
        for i in range(3):
            write_jpeg(root / "train" / wnid / f"tr_{image_id}_{i}.JPEG", (48, 40), seed=50 + 3 * n + i)
    ckpt = base / "vit.pth"
    torch.save({"model": {"model." + k: v for k, v in tiny_vit().state_dict().items()}}, ckpt)
    store = base / "store"
    earlier = base / "earlier"
    r = runner.invoke(app, ["patch-hit", "-c", str(ckpt), "-r", str(root), "-o", str(earlier), "--cache-dir",
                            str(store), "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    return {"base": base, "root": root, "ckpt": ckpt, "store": store, "earlier": earlier}


def snapshot(*folders: Path) -> dict[str, str]:
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.name != "hashes.sqlite" and "aborts" not in p.parts:
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def copy_data(world, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(world["root"], root)
    return root


def _xml(root: Path, image_id: str, text: str) -> None:
    (root / "bbox" / f"{image_id}.xml").write_text(text)


def _vit_ckpt(path: Path, poison: bool = False) -> Path:
    sd = tiny_vit().state_dict()
    if poison:
        sd["encoder.layers.encoder_layer_0.mlp.0.weight"][0, 0] = float("nan")
    torch.save(sd, path)
    return path


def case_root_is_a_file(w, t):
    (t / "file.txt").write_text("x")
    return ["patch-hit", "-c", w["ckpt"], "-r", t / "file.txt"], "file.txt"


def case_text_as_pth(w, t):
    (t / "notes.pth").write_text("hello, not weights\n")
    return ["patch-hit", "-c", t / "notes.pth", "-r", w["root"]], "notes.pth: is a text file"


def case_pth_named_safetensors(w, t):
    shutil.copy(w["ckpt"], t / "vit.safetensors")
    return ["patch-hit", "-c", t / "vit.safetensors", "-r", w["root"]], "vit.safetensors"


def case_safetensors_named_pth(w, t):
    from safetensors.torch import save_file

    save_file(tiny_vit().state_dict(), str(t / "weights.pth"))
    return ["patch-hit", "-c", t / "weights.pth", "-r", w["root"]], "weights.pth"


def case_nan_weights(w, t):
    return ["patch-hit", "-c", _vit_ckpt(t / "nan.pth", poison=True), "-r", w["root"]], "nan.pth"


def case_garbage_npz(w, t):
    (t / "f.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    return ["classify", "--test-features", t / "f.npz"], "f.npz"


def case_float_labels(w, t):
    fs = FeatureSet({"logits/cls": np.zeros((4, 10), np.float32)}, np.array([0.0, 0.5, 1.0, 2.0]),
                    ["a", "b", "c", "d"], classes=["0", "1", "2"])
    path = t / "float.npz"
    save_features(path, fs)
    with np.load(path) as z:  # rewrite the labels as floats, as another tool might
        arrays = {k: z[k] for k in z.files}
    arrays["labels"] = np.array([0.0, 0.5, 1.0, 2.0])
    np.savez(path, **arrays)
    return ["classify", "--test-features", path], "float.npz: labels must be whole numbers"


def case_bad_pooling(w, t):
    return ["patch-hit", "-c", w["ckpt"], "-r", w["root"], "-p", "last:k=abc"], "last:k=abc"


def case_negative_limit(w, t):
    return ["patch-hit", "-c", w["ckpt"], "-r", w["root"], "--limit", "-5"], "--limit -5"


def case_topk_above_patches(w, t):
    return ["patch-hit", "-c", w["ckpt"], "-r", w["root"], "-p", "last:k=99"], "exceeds the 16 patches"


def case_k_above_train(w, t):
    return ["knn", "-c", w["ckpt"], "-r", w["root"], "--ks", "10,500"], "--ks 500"


def case_nan_in_xml(w, t):
    root = copy_data(w, t)
    _xml(root, "img_0001", "<annotation><size><width>120</width><height>90</height></size><object><name>n01440764"
         "</name><bndbox><xmin>nan</xmin><ymin>12</ymin><xmax>40</xmax><ymax>50</ymax></bndbox></object>"
         "</annotation>")
    return ["patch-hit", "-c", w["ckpt"], "-r", root], "img_0001"


def case_xml_for_another_size(w, t):
    root = copy_data(w, t)
    write_voc_xml(root / "bbox" / "img_0001.xml", "img_0001", (60, 45), [(5, 6, 20, 25)], "n01440764")
    return ["patch-hit", "-c", w["ckpt"], "-r", root], "img_0001.xml"


def _coco(t: Path, mutate) -> Path:
    coco = {"images": [{"id": 1, "file_name": "img_0001.JPEG", "width": 120, "height": 90}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 12, 30, 38], "area": 1140,
                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "n01440764"}]}
    mutate(coco)
    (t / "c.json").write_text(json.dumps(coco))
    return t / "c.json"


def case_coco_without_annotations(w, t):
    return ["patch-hit", "-c", w["ckpt"], "-r", w["root"], "--boxes", _coco(t, lambda c: c.pop("annotations"))], \
        "annotations"


def case_coco_without_bbox(w, t):
    return ["patch-hit", "-c", w["ckpt"], "-r", w["root"], "--boxes",
            _coco(t, lambda c: c["annotations"][0].pop("bbox"))], "c.json"


def case_coco_unknown_category(w, t):
    return ["patch-hit", "-c", w["ckpt"], "-r", w["root"], "--boxes",
            _coco(t, lambda c: c["annotations"][0].update(category_id=7))], "c.json"


def case_output_is_a_file(w, t):
    (t / "out").write_text("x")
    return ["patch-hit", "-c", w["ckpt"], "-r", w["root"], "-o", t / "out"], "out"


def case_output_under_a_file(w, t):
    (t / "out").write_text("x")
    return ["patch-hit", "-c", w["ckpt"], "-r", w["root"], "-o", t / "out" / "run"], "out"


def case_output_unwritable(w, t):
    return ["patch-hit", "-c", w["ckpt"], "-r", w["root"], "-o", "/proc/lastvit-eval/run"], "/proc/lastvit-eval"


def case_earlier_results_in_the_folder(w, t):
    return ["patch-hit", "-c", w["ckpt"], "-r", w["root"], "-o", w["earlier"], "-p", "cls"], "--overwrite"


def case_unmappable_classes(w, t):
    return ["classify", "-c", w["ckpt"], "-r", w["root"]], "cannot map"


def case_zero_shot_on_a_vit(w, t):
    return ["zero-shot", "-c", w["ckpt"], "-r", w["root"]], "needs a CLIP checkpoint"


def case_corrupt_image_under_fail(w, t):
    root = copy_data(w, t)
    victim = root / "val" / "n01491361" / "img_0007.JPEG"
    victim.write_bytes(victim.read_bytes()[:200])
    return ["patch-hit", "-c", w["ckpt"], "-r", root, "--on-bad-image", "fail"], "img_0007.JPEG"


def case_bad_class_map(w, t):
    (t / "map.txt").write_text("n01440764 zero\n")
    return ["classify", "-c", w["ckpt"], "-r", w["root"], "--class-map", t / "map.txt"], "map.txt:1"


def case_store_is_a_file(w, t):
    (t / "store").write_text("x")
    return ["patch-hit", "-c", w["ckpt"], "-r", copy_data(w, t), "--cache-dir", t / "store", "-p", "gap"], "store"


def case_train_features_alone(w, t):
    return ["knn", "-c", w["ckpt"], "-r", w["root"], "--train-features", t / "x.npz"], "--train-features"


def case_unknown_on_bad_image(w, t):
    return ["patch-hit", "-c", w["ckpt"], "-r", w["root"], "--on-bad-image", "maybe"], "--on-bad-image 'maybe'"


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_line_and_loses_nothing(case, world, tmp_path):
    before = snapshot(world["earlier"], world["store"])
    args, names = CASES[case](world, tmp_path)
    if "--cache-dir" not in [str(a) for a in args]:
        args = [*args, "--cache-dir", world["store"]]
    if "-o" not in [str(a) for a in args] and args[0] not in ("extract",):
        args = [*args, "-o", tmp_path / "run"]
    r = runner.invoke(app, [str(a) for a in [*args, "--no-progress"]])
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert r.exit_code == 2, r.output
    assert len(errors) == 1 and names in errors[0], r.output
    assert "Traceback" not in r.output
    assert snapshot(world["earlier"], world["store"]) == before


def test_a_full_disk_while_storing_features_is_one_line_and_keeps_the_store(world, tmp_path, monkeypatch):
    import lastvit_eval.engine.store as store_mod

    before = snapshot(world["earlier"], world["store"])

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "atomic_write", full)
    r = runner.invoke(app, [str(a) for a in ["patch-hit", "-c", world["ckpt"], "-r", world["root"], "-p",
                                             "last:k=3", "-o", tmp_path / "run", "--cache-dir", world["store"],
                                             "--workers", 0, "--no-progress"]])
    assert r.exit_code == 2 and "No space left on device" in r.output and "feature store" in r.output, r.output
    assert snapshot(world["earlier"], world["store"]) == before
    assert not list(world["store"].rglob("*.tmp"))
    assert not list((tmp_path / "run").rglob("metrics.json"))
