"""Feature cache: hits skip the forward pass, every key part invalidates, damaged shards are redone."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_vit, write_jpeg
from typer.testing import CliRunner

import lastvit_eval
import lastvit_eval.engine.extract as ex
from lastvit_eval.app import app
from lastvit_eval.engine.cache import CacheEntry, CacheSpec, cache_key, key_parts, list_entries
from lastvit_eval.engine.device import EngineSpec
from lastvit_eval.engine.extract import TapRequest, extract
from lastvit_eval.models import load_model
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
def calls(monkeypatch) -> list[int]:
    """Images that went through the model, per forward call."""
    seen: list[int] = []
    real = ex.forward_taps

    def counting(model, x, *a, **k):
        seen.append(len(x))
        return real(model, x, *a, **k)

    monkeypatch.setattr(ex, "forward_taps", counting)
    return seen


def same(a, b) -> None:
    assert np.array_equal(a.index, b.index)
    assert a.arrays.keys() == b.arrays.keys()
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)
    assert a.bad == b.bad


def test_hit_does_no_forward_and_matches_uncached(model, paths, tmp_path, calls):
    spec = CacheSpec(dir=tmp_path / "c", shard_size=3)
    # same shard layout, no cache: identical batches, so bit-identical arrays
    ref = extract(model, paths, REQUEST, ENGINE, progress=False, cache=dataclasses.replace(spec, enabled=False))
    first = extract(model, paths, REQUEST, ENGINE, progress=False, cache=spec)
    assert sum(calls) == 2 * len(paths) and first.cache["computed"] == 3 and ref.cache["key"] is None
    calls.clear()
    second = extract(model, paths, REQUEST, ENGINE, progress=False, cache=spec)
    assert calls == [] and second.cache["reused"] == 3 and second.cache["computed"] == 0
    same(ref, first)
    same(ref, second)
    manifest = json.loads((CacheEntry(spec.root, second.cache["key"]).manifest_file).read_text())
    assert manifest["status"] == "complete" and len(manifest["shards"]) == 3
    assert manifest["parts"]["model"]["sha256"] == model.sha256 and manifest["parts"]["dtype"] == "fp32"
    # disabled cache: nothing read or written
    calls.clear()
    extract(model, paths, REQUEST, ENGINE, progress=False, cache=CacheSpec(dir=tmp_path / "off", enabled=False))
    assert sum(calls) == len(paths) and not (tmp_path / "off").exists()


def _key(model, paths, request=REQUEST, engine=ENGINE, spec=CacheSpec(shard_size=3)) -> str:
    return cache_key(key_parts(model, paths, request, engine, spec))


def test_every_key_part_invalidates(model, paths, tmp_path, monkeypatch, detectron2_ckpt):
    base = _key(model, paths)
    assert _key(load_model(detectron2_ckpt), list(paths)) == base  # deterministic
    changed = {}
    other = tmp_path / "other.pth"  # same architecture, different weights
    torch.save({"model": {"model." + k: v for k, v in tiny_vit(seed=1).state_dict().items()}}, other)
    changed["checkpoint bytes"] = _key(load_model(other), paths)
    changed["pooling"] = _key(model, paths, TapRequest((PoolingSpec("last", topk=2), PoolingSpec("cls")),
                                                       REQUEST.taps))
    changed["taps"] = _key(model, paths, TapRequest(REQUEST.poolings, frozenset({"patch_scores"})))
    changed["dtype"] = _key(model, paths, engine=dataclasses.replace(ENGINE, dtype="bf16"))
    changed["decode"] = _key(model, paths, engine=dataclasses.replace(ENGINE, decode="gpu"))
    changed["shard size"] = _key(model, paths, spec=CacheSpec(shard_size=4))
    m2 = dataclasses.replace(model, transform=dataclasses.replace(model.transform, interpolation="bicubic"))
    changed["transform"] = _key(m2, paths)
    changed["order"] = _key(model, paths[::-1])
    extra = paths[0].parent / "extra.JPEG"
    write_jpeg(extra, (50, 40), seed=99)
    changed["file added"] = _key(model, [*paths, extra])
    st = paths[0].stat()
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed["file touched"] = _key(model, paths)
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _key(model, paths) == base
    write_jpeg(paths[1], (64, 160), seed=123)
    changed["file rewritten"] = _key(model, paths)
    monkeypatch.setattr(lastvit_eval, "__version__", "9.9.9")
    changed["toolkit version"] = _key(model, paths)
    assert all(k != base for k in changed.values()), [n for n, k in changed.items() if k == base]
    assert len(set(changed.values())) == len(changed)


def test_relocated_dataset_keeps_its_key(model, paths, imagenet_root, tmp_path):
    """Keys use paths relative to the data folder: a copy with the same files (and mtimes) still hits."""
    copy = tmp_path / "copy"
    shutil.copytree(imagenet_root, copy)  # copy2 keeps mtimes
    moved = [copy / p.relative_to(imagenet_root) for p in paths]
    assert _key(model, moved) == _key(model, paths)
    assert _key(model, moved, spec=CacheSpec(shard_size=3, dataset_hash="content")) != _key(model, moved)


def test_corrupt_shards_are_detected_and_recomputed(model, paths, tmp_path, calls):
    spec = CacheSpec(dir=tmp_path / "c", shard_size=3)
    first = extract(model, paths, REQUEST, ENGINE, progress=False, cache=spec)
    entry = CacheEntry(spec.root, first.cache["key"])
    data = bytearray(entry.shard_file(0).read_bytes())
    data[-5] ^= 0xFF  # a flipped bit inside the tensor data
    entry.shard_file(0).write_bytes(bytes(data))
    with open(entry.shard_file(2), "r+b") as f:  # truncated
        f.truncate(40)
    calls.clear()
    again = extract(model, paths, REQUEST, ENGINE, progress=False, cache=spec)
    assert sum(calls) == 3 + 2  # shard 0 (3 images) and shard 2 (the last 2) only
    assert len(again.cache["corrupt"]) == 2 and all("checksum" in c for c in again.cache["corrupt"])
    same(first, again)
    calls.clear()
    extract(model, paths, REQUEST, ENGINE, progress=False, cache=spec)
    assert calls == []  # the recomputed shards were rewritten intact


def test_bad_images_are_cached_too(model, paths, tmp_path, calls):
    broken = paths[0].parent / "broken.JPEG"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    spec = CacheSpec(dir=tmp_path / "c", shard_size=4)
    first = extract(model, [broken, *paths], REQUEST, ENGINE, progress=False, cache=spec)
    calls.clear()
    second = extract(model, [broken, *paths], REQUEST, ENGINE, progress=False, cache=spec)
    assert calls == [] and second.bad == first.bad and second.bad[0][0] == str(broken)
    assert 0 not in second.index and len(second.index) == len(paths)


def test_oom_backoff_halves_the_batch(model, paths, monkeypatch):
    ref = extract(model, paths, REQUEST, dataclasses.replace(ENGINE, batch_size=8), progress=False)
    real = ex.forward_taps

    def small_only(model, x, *a, **k):
        if len(x) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, x, *a, **k)

    monkeypatch.setattr(ex, "forward_taps", small_only)
    got = extract(model, paths, REQUEST, dataclasses.replace(ENGINE, batch_size=8), progress=False)
    assert got.engine_info["oom_backoffs"] == [{"from": 8, "to": 4}, {"from": 4, "to": 2}]
    assert got.engine_info["batch_size_final"] == 2
    assert np.array_equal(got.index, ref.index)
    for k in ref.arrays:
        np.testing.assert_allclose(got.arrays[k], ref.arrays[k], atol=1e-5, err_msg=k)


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


def test_patch_hit_cli_uses_cache_and_cache_commands(imagenet_root, detectron2_ckpt, tmp_path, calls):
    cdir = tmp_path / "cache"
    common = ["patch-hit", "-c", detectron2_ckpt, "-r", imagenet_root, "--workers", 0, "--batch-size", 2,
              "--no-progress", "--cache-dir", cdir, "--shard-size", 2]
    r1 = cli(*common, "-o", tmp_path / "r1")
    assert r1.exit_code == 0, r1.output
    n_first = sum(calls)
    calls.clear()
    r2 = cli(*common, "-o", tmp_path / "r2")
    assert r2.exit_code == 0, r2.output
    assert n_first == 5 and calls == []
    m1, m2 = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("r1", "r2"))
    assert m1["metrics"] == m2["metrics"]
    assert m2["info"]["patch-hit"]["cache"]["reused"] == 3
    assert (tmp_path / "r1" / "patch_hit_rows.csv").read_text() == (tmp_path / "r2" / "patch_hit_rows.csv").read_text()
    # a different pooling is a different entry
    assert cli(*common, "--pooling", "cls", "-o", tmp_path / "r3").exit_code == 0
    entries = list_entries(cdir)
    assert len(entries) == 2 and all(e.shards_done == e.shards_total == 3 for e in entries)
    ls = cli("cache", "ls", "--cache-dir", cdir)
    assert ls.exit_code == 0 and entries[0].key[:16] in ls.output and "3/3" in ls.output
    r = runner.invoke(app, ["cache", "clear", "--cache-dir", str(cdir)])
    assert r.exit_code == 2 and "give entry keys or --all" in r.output  # neither keys nor --all
    r = runner.invoke(app, ["cache", "clear", "nosuchkey", "--cache-dir", str(cdir)])
    assert r.exit_code == 2 and "no entry with key 'nosuchkey'" in r.output
    r = cli("cache", "clear", entries[0].key[:10], "--cache-dir", cdir)
    assert r.exit_code == 0 and "removed 1" in r.output
    assert [e.key for e in list_entries(cdir)] == [entries[1].key]
    assert cli("cache", "clear", "--all", "--cache-dir", cdir).exit_code == 0 and list_entries(cdir) == []
    # --no-cache writes nothing
    calls.clear()
    assert cli(*common, "--no-cache", "-o", tmp_path / "r4").exit_code == 0
    assert sum(calls) == 5 and list_entries(cdir) == []


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    from lastvit_eval.engine.cache import default_cache_dir

    monkeypatch.setenv("LASTVIT_EVAL_CACHE", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("LASTVIT_EVAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "lastvit-eval"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert default_cache_dir() == tmp_path / "h" / ".cache" / "lastvit-eval"
