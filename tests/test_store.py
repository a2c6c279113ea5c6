"""Feature store: per-image content keys, every command shares it, stale code or weights never reused."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_vit, write_jpeg
from typer.testing import CliRunner

import lastvit_eval.engine.extract as ex
from lastvit_eval.app import app
from lastvit_eval.engine import fingerprint
from lastvit_eval.engine.device import EngineSpec
from lastvit_eval.engine.extract import extract
from lastvit_eval.engine.store import FeatureSpace, StoreSpec, list_columns, space_key, space_parts
from lastvit_eval.engine.taps import TapRequest
from lastvit_eval.models import LoadOptions, load_model
from lastvit_eval.pooling import PoolingSpec

ENGINE = EngineSpec(device="cpu", batch_size=2, workers=0)
REQUEST = TapRequest((PoolingSpec("last"), PoolingSpec("cls")), frozenset({"patch_scores", "pooled", "votes"}))


@pytest.fixture
def model(detectron2_ckpt):
    return load_model(detectron2_ckpt)


@pytest.fixture
def paths(imagenet_root) -> list[Path]:
    return sorted((imagenet_root / "val").rglob("*.JPEG"))


@pytest.fixture
def calls(forwarded) -> list[int]:
    return forwarded


def same(a, b) -> None:
    assert np.array_equal(a.index, b.index)
    assert a.arrays.keys() == b.arrays.keys()
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)
    assert a.bad == b.bad


def test_hit_does_no_forward_and_matches_no_store(model, paths, tmp_path, calls):
    spec = StoreSpec(dir=tmp_path / "s", shard_size=3)
    ref = extract(model, paths, REQUEST, ENGINE, progress=False, store=dataclasses.replace(spec, enabled=False))
    first = extract(model, paths, REQUEST, ENGINE, progress=False, store=spec)
    assert sum(calls) == 2 * len(paths) and first.store["images_computed"] == len(paths)
    calls.clear()
    second = extract(model, paths, REQUEST, ENGINE, progress=False, store=spec)
    assert calls == [] and second.store["images_reused"] == len(paths) and second.store["images_computed"] == 0
    same(ref, first)
    same(ref, second)
    # a subset in another order reads the same rows
    sub = extract(model, paths[::-2], REQUEST, ENGINE, progress=False, store=spec)
    assert calls == []
    for k in ref.arrays:
        np.testing.assert_array_equal(sub.arrays[k], ref.arrays[k][::-2], err_msg=k)
    # disabled store: nothing read or written
    extract(model, paths, REQUEST, ENGINE, progress=False, store=StoreSpec(dir=tmp_path / "off", enabled=False))
    assert sum(calls) == len(paths) and not (tmp_path / "off").exists()


def test_widened_forward_serves_other_taps_and_poolings(model, paths, tmp_path, calls):
    spec = StoreSpec(dir=tmp_path / "s")
    extract(model, paths, TapRequest((PoolingSpec("last"),), frozenset({"patch_scores"})), ENGINE, progress=False,
            store=spec, widen=True)
    calls.clear()
    got = extract(model, paths, TapRequest((PoolingSpec("cls"), PoolingSpec("gap")), frozenset({"pooled", "logits"})),
                  ENGINE, progress=False, store=spec)
    assert calls == [] and set(got.arrays) == {"pooled/cls", "pooled/gap", "logits/cls", "logits/gap"}
    ref = extract(model, paths, TapRequest((PoolingSpec("cls"),), frozenset({"logits"})), ENGINE, progress=False)
    np.testing.assert_allclose(got.arrays["logits/cls"], ref.arrays["logits/cls"], rtol=0, atol=1e-5)
    calls.clear()
    extract(model, paths, TapRequest((PoolingSpec("last", topk=2),), frozenset({"pooled"})), ENGINE,
            progress=False, store=spec)
    assert sum(calls) == len(paths)  # a pooling nobody stored yet needs the forward


def _key(model, engine=ENGINE) -> str:
    return space_key(space_parts(model, engine, "cpu"))


def test_every_key_part_invalidates(model, tmp_path, monkeypatch, detectron2_ckpt):
    base = _key(model)
    renamed = tmp_path / "renamed.pth"
    shutil.copy(detectron2_ckpt, renamed)
    assert _key(load_model(renamed)) == base  # the file's bytes count, not its name
    changed = {}
    other = tmp_path / "other.pth"  # same architecture, different weights
    torch.save({"model": {"model." + k: v for k, v in tiny_vit(seed=1).state_dict().items()}}, other)
    changed["checkpoint bytes"] = _key(load_model(other))
    changed["ignore keys"] = _key(load_model(detectron2_ckpt, LoadOptions(ignore_keys=("heads.",))))
    changed["dtype"] = _key(model, engine=dataclasses.replace(ENGINE, dtype="bf16"))
    changed["decode"] = _key(model, engine=dataclasses.replace(ENGINE, decode="gpu"))
    m2 = dataclasses.replace(model, transform=dataclasses.replace(model.transform, interpolation="bicubic"))
    changed["transform"] = _key(m2)
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda: "edited-pooling")
    changed["code that shapes features"] = _key(model)
    monkeypatch.undo()
    monkeypatch.setattr(fingerprint, "library_versions", lambda: {"torch": "9.9"})
    changed["library versions"] = _key(model)
    monkeypatch.undo()
    assert _key(model) == base
    assert all(k != base for k in changed.values()), [n for n, k in changed.items() if k == base]
    assert len(set(changed.values())) == len(changed)


def test_code_fingerprint_covers_the_files_that_shape_features():
    files = {str(p.relative_to(fingerprint.PACKAGE)) for p in fingerprint._files()}
    assert {"pooling.py", "engine/taps.py", "data/transform.py", "engine/dataset.py"} <= files
    assert any(f.startswith("models/") for f in files)
    assert "report/write.py" not in files  # reporting does not change features


def test_edited_code_invalidates_the_store(model, paths, tmp_path, calls, monkeypatch):
    spec = StoreSpec(dir=tmp_path / "s")
    extract(model, paths, REQUEST, ENGINE, progress=False, store=spec)
    calls.clear()
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda: "someone-edited-pooling.py")
    extract(model, paths, REQUEST, ENGINE, progress=False, store=spec)
    assert sum(calls) == len(paths)


def test_copied_renamed_dataset_hits_and_a_rewritten_file_misses(model, paths, imagenet_root, tmp_path, calls):
    spec = StoreSpec(dir=tmp_path / "s")
    first = extract(model, paths, REQUEST, ENGINE, progress=False, store=spec)
    copy = tmp_path / "copy"
    shutil.copytree(imagenet_root, copy)
    moved = [copy / p.relative_to(imagenet_root) for p in paths]
    moved[0] = moved[0].rename(moved[0].with_name("renamed.JPEG"))
    calls.clear()
    again = extract(model, moved, REQUEST, ENGINE, progress=False, store=spec)
    assert calls == []
    for k in first.arrays:
        np.testing.assert_array_equal(first.arrays[k], again.arrays[k])
    write_jpeg(moved[1], (64, 160), seed=123)  # new content under an old name
    extract(model, moved, REQUEST, ENGINE, progress=False, store=spec)
    assert sum(calls) == 1


def test_corrupt_shards_are_detected_and_recomputed(model, paths, tmp_path, calls):
    spec = StoreSpec(dir=tmp_path / "s", shard_size=3)
    first = extract(model, paths, REQUEST, ENGINE, progress=False, store=spec)
    space = FeatureSpace(spec.root, space_parts(model, ENGINE, "cpu"))
    shards = sorted(space.tap_dir("pooled/cls").glob("*.safetensors"))
    assert len(shards) == 3
    data = bytearray(shards[0].read_bytes())
    data[-5] ^= 0xFF  # a flipped bit inside the tensor data
    shards[0].write_bytes(bytes(data))
    calls.clear()
    again = extract(model, paths, REQUEST, ENGINE, progress=False, store=spec)
    n_bad = json.loads(shards[0].with_suffix(".json").read_text())["images"] if shards[0].exists() else None
    assert n_bad is None  # the damaged shard was removed
    assert len(again.store["corrupt"]) == 1 and "checksum" in again.store["corrupt"][0]
    assert 1 <= sum(calls) <= 3  # only the images of that shard went through the model again
    for k in first.arrays:  # recomputed in other batches: equal up to float rounding
        np.testing.assert_allclose(again.arrays[k], first.arrays[k], rtol=0, atol=2e-5, err_msg=k)
    calls.clear()
    extract(model, paths, REQUEST, ENGINE, progress=False, store=spec)
    assert calls == []


def test_bad_images_are_reported_every_time_and_never_stored(model, paths, tmp_path, calls):
    broken = paths[0].parent / "broken.JPEG"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    spec = StoreSpec(dir=tmp_path / "s", shard_size=4)
    first = extract(model, [broken, *paths], REQUEST, ENGINE, progress=False, store=spec)
    calls.clear()
    second = extract(model, [broken, *paths], REQUEST, ENGINE, progress=False, store=spec)
    assert calls == [] and second.bad == first.bad and second.bad[0][0] == str(broken)
    assert 0 not in second.index and len(second.index) == len(paths)


def test_oom_backoff_halves_the_batch(model, paths, monkeypatch):
    ref = extract(model, paths, REQUEST, dataclasses.replace(ENGINE, batch_size=8), progress=False)
    real = ex.forward_taps

    def small_only(model, x, *a, **k):
        if len(x) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, x, *a, **k)

    got = extract(model, paths, REQUEST, dataclasses.replace(ENGINE, batch_size=8), progress=False,
                  forward_fn=small_only)
    assert got.engine_info["oom_backoffs"] == [{"from": 8, "to": 4}, {"from": 4, "to": 2}]
    assert got.engine_info["batch_size_final"] == 2
    assert np.array_equal(got.index, ref.index)
    for k in ref.arrays:
        np.testing.assert_allclose(got.arrays[k], ref.arrays[k], atol=1e-5, err_msg=k)


def test_non_finite_output_is_an_error_naming_the_image(model, paths):
    from lastvit_eval.errors import InputError

    real = ex.forward_taps

    def poisoned(model, x, *a, **k):
        out = real(model, x, *a, **k)
        out["pooled/cls"][-1, 0] = float("nan")
        return out

    with pytest.raises(InputError, match=rf"{paths[1].name}.*non-finite"):
        extract(model, paths, REQUEST, ENGINE, progress=False, forward_fn=poisoned)


def test_compile_failure_falls_back_to_eager(model, paths, monkeypatch):
    def broken_compile(fn, *a, **k):
        def call(x):
            raise RuntimeError("inductor: no compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    ref = extract(model, paths, REQUEST, ENGINE, progress=False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = extract(model, paths, REQUEST, dataclasses.replace(ENGINE, compile=True), progress=False)
    assert any("torch.compile failed" in str(x.message) for x in w)
    assert got.engine_info["compile"].startswith("failed")
    same(ref, got)


runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_patch_hit_cli_uses_the_store_and_cache_commands(imagenet_root, detectron2_ckpt, tmp_path, calls):
    sdir = tmp_path / "store"
    common = ["patch-hit", "-c", detectron2_ckpt, "-r", imagenet_root, "--workers", 0, "--batch-size", 2,
              "--no-progress", "--cache-dir", sdir, "--shard-size", 2]
    r1 = cli(*common, "-o", tmp_path / "r1")
    assert r1.exit_code == 0, r1.output
    n_first = sum(calls)
    calls.clear()
    r2 = cli(*common, "-o", tmp_path / "r2")
    assert r2.exit_code == 0, r2.output
    assert n_first == 5 and calls == []
    m1, m2 = (json.loads((tmp_path / r / "last-k1" / "metrics.json").read_text()) for r in ("r1", "r2"))
    assert m1["metrics"] == m2["metrics"]
    assert m2["info"]["patch-hit"]["extraction"]["test"]["store"]["images_reused"] == 5
    assert ((tmp_path / "r1" / "last-k1" / "patch_hit_rows.csv").read_text()
            == (tmp_path / "r2" / "last-k1" / "patch_hit_rows.csv").read_text())
    # cls was stored by the widened first forward
    assert cli(*common, "--pooling", "cls", "-o", tmp_path / "r3").exit_code == 0 and calls == []
    cols = list_columns(sdir)
    assert {c.tap for c in cols} >= {"patch_scores/last-k1", "patch_scores/cls", "pooled/gap"}
    assert all(c.images == 5 for c in cols)
    ls = cli("cache", "ls", "--cache-dir", sdir)
    assert ls.exit_code == 0 and "patch_scores/last-k1" in ls.output and max(map(len, ls.output.splitlines())) <= 100
    r = runner.invoke(app, ["cache", "clear", "--cache-dir", str(sdir)])
    assert r.exit_code == 2 and "give --model, --older-than or --all" in r.output
    r = cli("cache", "clear", "--model", "nosuch.pth", "--cache-dir", sdir)
    assert r.exit_code == 0 and "removed 0" in r.output and list_columns(sdir)
    r = cli("cache", "clear", "--model", Path(detectron2_ckpt).name, "--cache-dir", sdir)
    assert r.exit_code == 0 and "removed 1" in r.output and list_columns(sdir) == []
    # --no-cache writes nothing
    calls.clear()
    assert cli(*common, "--no-cache", "-o", tmp_path / "r4").exit_code == 0
    assert sum(calls) == 5 and list_columns(sdir) == []


def test_default_store_dir_follows_env(monkeypatch, tmp_path):
    from lastvit_eval.engine.store import default_store_dir

    monkeypatch.setenv("LASTVIT_EVAL_CACHE", str(tmp_path / "a"))
    assert default_store_dir() == tmp_path / "a"
    monkeypatch.delenv("LASTVIT_EVAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_store_dir() == tmp_path / "x" / "lastvit-eval"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert default_store_dir() == tmp_path / "h" / ".cache" / "lastvit-eval"
