"""Lazy weights: a command whose features are all stored builds no model; load errors still come at plan time."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_vit, write_jpeg
from typer.testing import CliRunner

import lastvit_eval.models.torchvision_vit as tv
from lastvit_eval.app import app
from lastvit_eval.features_io import load_features
from lastvit_eval.models import LoadOptions, lazy, load_model

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def builds(monkeypatch) -> list[int]:
    """Modules built by the torchvision adapter (one entry per build)."""
    seen: list[int] = []
    real = tv.build

    def counting(arch):
        seen.append(1)
        return real(arch)

    monkeypatch.setattr(tv, "build", counting)
    return seen


def patch_hit(ckpt, root, store, out, *extra):
    return cli("patch-hit", "-c", ckpt, "-r", root, "--workers", 0, "--batch-size", 2, "--no-progress",
               "--cache-dir", store, "-o", out, *extra)


def test_stored_features_need_no_model_and_give_the_same_results(imagenet_root, detectron2_ckpt, tmp_path, builds,
                                                                  forwarded):
    store = tmp_path / "store"
    r1 = patch_hit(detectron2_ckpt, imagenet_root, store, tmp_path / "r1")
    assert r1.exit_code == 0, r1.output
    assert len(builds) == 1 and sum(forwarded) == 5
    assert len(list((store / "models").glob("*.json"))) == 1
    builds.clear()
    forwarded.clear()
    r2 = patch_hit(detectron2_ckpt, imagenet_root, store, tmp_path / "r2")
    assert r2.exit_code == 0, r2.output
    assert builds == [] and forwarded == []  # planned, read and evaluated without a module
    m1, m2 = (json.loads((tmp_path / r / "last-k1" / "metrics.json").read_text()) for r in ("r1", "r2"))
    assert m1["metrics"] == m2["metrics"]
    assert m1["provenance"]["model"] == m2["provenance"]["model"]
    assert ((tmp_path / "r1" / "last-k1" / "patch_hit_rows.csv").read_text()
            == (tmp_path / "r2" / "last-k1" / "patch_hit_rows.csv").read_text())
    # extract with its default poolings asks whether the model has its own attention pool: the record answers
    r3 = cli("extract", "-o", tmp_path / "val.npz", "-c", detectron2_ckpt, "-r", imagenet_root, "--workers", 0,
             "--batch-size", 2, "--no-progress", "--cache-dir", store, "-p", "cls")
    assert r3.exit_code == 0, r3.output
    assert builds == [1] and sum(forwarded) > 0  # patch-hit stored no logits: the first extract forwards
    builds.clear()
    forwarded.clear()
    r4 = cli("extract", "-o", tmp_path / "val2.npz", "-c", detectron2_ckpt, "-r", imagenet_root, "--workers", 0,
             "--batch-size", 2, "--no-progress", "--cache-dir", store)
    assert r4.exit_code == 0, r4.output
    assert builds == [] and forwarded == []  # every default pooling stored: no module built to ask about `map`
    assert load_features(tmp_path / "val2.npz").arrays.keys() >= {"pooled/cls", "pooled/gap", "pooled/last-k1"}


def test_lazy_model_builds_on_first_forward_and_matches_the_full_load(imagenet_root, detectron2_ckpt, tmp_path,
                                                                      builds):
    store = tmp_path / "store"
    assert patch_hit(detectron2_ckpt, imagenet_root, store, tmp_path / "r1").exit_code == 0
    builds.clear()
    m = load_model(detectron2_ckpt, LoadOptions(), store_root=store)
    full = load_model(detectron2_ckpt, LoadOptions())
    assert isinstance(m, lazy.LazyLoadedModel) and not m.materialized and len(builds) == 1  # `full` only
    assert (m.arch, m.transform, m.keys, m.sha256, m.params, m.name) == (
        full.arch, full.transform, full.keys, full.sha256, full.params, full.name)
    assert m.provenance() == full.provenance()
    x = torch.randn(2, 3, 32, 32)
    got = m.backbone.tokens(x)  # first access: the full load
    assert m.materialized and len(builds) == 2
    torch.testing.assert_close(got, full.backbone.tokens(x), rtol=0, atol=0)
    # a new image in the folder: only it is forwarded, through the materialized model
    write_jpeg(imagenet_root / "val" / "n01440764" / "ILSVRC2012_val_00009999.JPEG", (64, 48), seed=99,
               box=(5, 5, 40, 30))
    builds.clear()
    out = tmp_path / "e.npz"
    r = cli("extract", "-o", out, "-c", detectron2_ckpt, "-r", imagenet_root, "--workers", 0, "--batch-size", 2,
            "--no-progress", "--cache-dir", store)
    assert r.exit_code == 0, r.output
    assert len(builds) == 1
    ref = tmp_path / "ref.npz"
    r = cli("extract", "-o", ref, "-c", detectron2_ckpt, "-r", imagenet_root, "--workers", 0, "--batch-size", 2,
            "--no-progress", "--no-cache")
    assert r.exit_code == 0, r.output
    a, b = load_features(out), load_features(ref)
    assert a.image_ids == b.image_ids and "ILSVRC2012_val_00009999" in a.image_ids
    assert a.meta["store"]["images_reused"] == 5 and a.meta["store"]["images_computed"] == len(a.image_ids) - 5
    assert sorted(a.arrays) == sorted(b.arrays) and any(k.startswith("logits/") for k in b.arrays)
    for k in b.arrays:
        np.testing.assert_allclose(a.arrays[k], b.arrays[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_a_bad_checkpoint_still_fails_at_plan_time(imagenet_root, detectron2_ckpt, tmp_path, forwarded):
    store = tmp_path / "store"
    assert patch_hit(detectron2_ckpt, imagenet_root, store, tmp_path / "r1").exit_code == 0
    forwarded.clear()
    # the same path, new content: the second block's MLP disagrees with the width read from the first
    sd = {"model." + k: v for k, v in tiny_vit().state_dict().items()}
    sd["model.encoder.layers.encoder_layer_1.mlp.0.weight"] = torch.zeros(50, 192)
    torch.save({"model": sd}, detectron2_ckpt)
    r = runner.invoke(app, ["patch-hit", "-c", str(detectron2_ckpt), "-r", str(imagenet_root), "--no-progress",
                            "--cache-dir", str(store), "-o", str(tmp_path / "r2")])
    assert r.exit_code == 2 and "Error:" in r.output and "encoder_layer_1.mlp.0.weight" in r.output, r.output
    assert forwarded == [] and not (tmp_path / "r2").exists()
    # an unrecognised file in its place: the format error, not a stale record
    torch.save({"weights": {"a": torch.zeros(2)}}, detectron2_ckpt)
    r = runner.invoke(app, ["patch-hit", "-c", str(detectron2_ckpt), "-r", str(imagenet_root), "--no-progress",
                            "--cache-dir", str(store), "-o", str(tmp_path / "r3")])
    assert r.exit_code == 2 and "unrecognised checkpoint format" in r.output, r.output


def test_load_options_code_and_damaged_records_miss(imagenet_root, detectron2_ckpt, tmp_path, builds, monkeypatch):
    store = tmp_path / "store"
    assert patch_hit(detectron2_ckpt, imagenet_root, store, tmp_path / "r1").exit_code == 0
    assert not isinstance(load_model(detectron2_ckpt, LoadOptions(ignore_keys=("model.heads",)), store_root=store),
                          lazy.LazyLoadedModel)
    assert not isinstance(load_model(detectron2_ckpt, LoadOptions(trust=True), store_root=store),
                          lazy.LazyLoadedModel)
    assert isinstance(load_model(detectron2_ckpt, LoadOptions(), store_root=store), lazy.LazyLoadedModel)
    from lastvit_eval.engine import fingerprint

    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda: "edited")
    assert not isinstance(load_model(detectron2_ckpt, LoadOptions(), store_root=store), lazy.LazyLoadedModel)
    monkeypatch.undo()
    for f in (store / "models").glob("*.json"):
        f.write_text("{not json")
    assert not isinstance(load_model(detectron2_ckpt, LoadOptions(), store_root=store), lazy.LazyLoadedModel)
    assert not isinstance(load_model(detectron2_ckpt, LoadOptions()), lazy.LazyLoadedModel)  # no store: eager


def test_a_file_changed_after_planning_is_an_error_at_materialization(imagenet_root, detectron2_ckpt, tmp_path):
    from lastvit_eval.errors import LastvitError

    store = tmp_path / "store"
    assert patch_hit(detectron2_ckpt, imagenet_root, store, tmp_path / "r1").exit_code == 0
    m = load_model(detectron2_ckpt, LoadOptions(), store_root=store)
    assert isinstance(m, lazy.LazyLoadedModel)
    torch.save({"model": {"model." + k: v for k, v in tiny_vit(seed=1).state_dict().items()}}, detectron2_ckpt)
    with pytest.raises(LastvitError, match="loads differently"):
        _ = m.backbone


def test_imagenet_wnids_are_timms_list():
    from timm.data import ImageNetInfo

    from lastvit_eval.classmap import imagenet_wnids

    assert imagenet_wnids() == list(ImageNetInfo().label_names())


def test_record_round_trip_keeps_every_field(detectron2_ckpt):
    full = load_model(detectron2_ckpt)
    rec = lazy.to_record(full)
    assert rec is not None and set(rec) >= {"arch", "transform", "keys", "source", "sha256", "params"}
    m = lazy.lazy_model(json.loads(json.dumps(rec)), LoadOptions(), lambda: full)
    assert (m.arch, m.transform, m.keys) == (full.arch, full.transform, full.keys)
    assert m.has_map_head is full.has_map_head is False and "materialized=False" in repr(m)
    assert "materialized=False" in repr(m)
    assert m.backbone is full.backbone
