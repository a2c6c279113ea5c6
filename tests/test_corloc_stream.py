"""CorLoc streams: extraction hands each chunk of taps to the evaluator's `reduce` (keys -> one box per image) and
keeps only the boxes, at full resolution (no store, chunks of REDUCE_CHUNK images) and at model resolution (read
back from the store one shard at a time). The reference is the same run without the reducer (the whole split's
taps held, as before): the rows must be byte-identical. Live tap bytes are counted from the forward's outputs
minus what `reduce` consumed, so the test fails if taps accumulate across chunks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_corloc_cli import HEAD, VOC, _image
from test_voc_data import write_xml
from tiny_models import tiny_timm
from typer.testing import CliRunner

import lastvit_eval.engine.extract as ex
import lastvit_eval.pipeline as pl
from lastvit_eval.app import app
from lastvit_eval.evaluators.corloc import CorLoc

runner = CliRunner()
MORE = [(f"1000{n:02d}", (30 + 7 * n, 52 - 3 * n), [("cat", 3 + n, 4, 20 + n, 30, 0, 0)]) for n in range(3)]


@pytest.fixture
def setup(tmp_path: Path) -> dict:
    base = tmp_path / "VOCdevkit" / "VOC2007"
    items = VOC + MORE
    for n, (image_id, size, objects) in enumerate(items):
        _image(base / "JPEGImages" / f"{image_id}.jpg", size, [(o[1] - 1, o[2] - 1, o[3], o[4]) for o in objects], n)
        write_xml(base / "Annotations" / f"{image_id}.xml", image_id, size, objects)
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i, _, _ in items))
    ckpt = tmp_path / "dino_tiny.pth"
    torch.save(tiny_timm(seed=3).state_dict(), ckpt)
    return {"root": tmp_path, "ckpt": ckpt, "n": len(items)}


def _run(s: dict, out: str, *extra: str) -> Path:
    o = s["root"] / out
    r = runner.invoke(app, ["corloc", "-c", str(s["ckpt"]), "--voc-root", str(s["root"]), "--year", "2007",
                            "--dinoseg-head", str(HEAD), "-o", str(o), "--workers", "0", "--no-progress", *extra])
    assert r.exit_code == 0, r.output
    return o


def _same(a: Path, b: Path, pooling: str) -> None:
    assert (a / pooling / "corloc_rows.csv").read_bytes() == (b / pooling / "corloc_rows.csv").read_bytes()
    ma, mb = (json.loads((d / pooling / "metrics.json").read_text())["metrics"] for d in (a, b))
    assert ma == mb


@pytest.fixture
def watch(monkeypatch) -> dict:
    """Counts the tap bytes produced by the forward, consumed by `reduce`, and what extraction hands back."""
    w = {"live": 0, "peak": 0, "produced": 0, "per_image": 0, "calls": [], "arrays": []}

    def tap_bytes(values) -> int:
        return int(sum(np.asarray(v).nbytes for v in values))

    real_forward = ex.forward_taps

    def forward(model, x, request, *a, **k):
        out = real_forward(model, x, request, *a, **k)
        b = sum(int(v.numel() * v.element_size()) for key, v in out.items() if key in ("keys", "cls_attn"))
        w["live"] += b
        w["produced"] += b
        w["peak"] = max(w["peak"], w["live"])
        w["per_image"] = max(w["per_image"], b // len(x))
        return out

    real_reduce = CorLoc.reduce

    def reduce(self, arrays, ids):
        w["calls"].append(len(ids))
        w["live"] -= sum(tap_bytes(v) for k, v in arrays.items() if k in ("keys", "cls_attn"))
        return real_reduce(self, arrays, ids)

    real_extract = pl.extract

    def extract(*a, **k):
        feats = real_extract(*a, **k)
        w["arrays"].append({key: (v.dtype, v.shape) for key, v in feats.arrays.items()})
        return feats

    monkeypatch.setattr(ex, "forward_taps", forward)
    monkeypatch.setattr(CorLoc, "reduce", reduce)
    monkeypatch.setattr(pl, "extract", extract)
    return w


@pytest.mark.parametrize("method", ["lost", "dino-seg"])
def test_full_resolution_holds_one_chunk_of_taps_and_equals_the_unreduced_run(setup, watch, monkeypatch, method):
    monkeypatch.setattr(ex, "REDUCE_CHUNK", 2)
    streamed = _run(setup, "streamed", "--method", method)
    n = setup["n"]
    assert watch["calls"] == [2, 2, 2, 1] and n == 7  # every chunk reduced as soon as it was forwarded
    assert 0 < watch["peak"] <= 2 * watch["per_image"]  # never more than a chunk of taps alive
    assert watch["live"] == 0
    assert watch["arrays"] == [{"box": (np.dtype(np.float64), (n, 4))}]  # only boxes were accumulated

    monkeypatch.setattr(pl, "_reducer", lambda plan, ids: None)  # the reference: the whole split's taps, as before
    watch.update(live=0, peak=0, produced=0, calls=[], arrays=[])
    whole = _run(setup, "whole", "--method", method)
    tap = "keys" if method == "lost" else "cls_attn"
    assert list(watch["arrays"][0]) == [tap] and watch["arrays"][0][tap][0] == np.dtype(object)  # ragged taps, all held
    assert watch["peak"] == watch["produced"] > 2 * watch["per_image"]  # (the counter sees them pile up)
    assert len(watch["calls"]) == 1 and watch["calls"][0] == n  # evaluate reduced the whole split at once
    _same(streamed, whole, "last-k1")


def test_model_resolution_reads_the_store_one_shard_at_a_time(setup, watch, monkeypatch):
    common = ("--method", "lost", "--resolution", "model", "-p", "cls", "-p", "gap", "--shard-size", "3",
              "--cache-dir", str(setup["root"] / "store"))
    first = _run(setup, "first", *common)  # forwards, writes shards of 3, then reads them back shard by shard
    assert watch["calls"] == [3, 3, 1]  # keys are pooling-free: one reduction serves both poolings
    assert watch["arrays"] == [{"box": (np.dtype(np.float64), (setup["n"], 4))}]
    watch.update(calls=[], arrays=[])
    second = _run(setup, "second", *common)
    assert watch["calls"] == [3, 3, 1]

    shard = sorted((setup["root"] / "store").rglob("*.safetensors"))
    keys_shards = [p for p in shard if "keys" in str(p)]
    assert len(keys_shards) == 3
    keys_shards[1].write_bytes(b"damaged")  # the read detects it, discards it and recomputes its images
    watch.update(calls=[])
    repaired = _run(setup, "repaired", *common)
    assert sorted(watch["calls"]) == [1, 3, 3]

    monkeypatch.setattr(pl, "_reducer", lambda plan, ids: None)
    whole = _run(setup, "whole", *common)
    for pooling in ("cls", "gap"):
        for run in (first, second, repaired):
            _same(run, whole, pooling)


def test_reduced_boxes_evaluate_like_the_taps(setup):
    """`evaluate` on the reducer's boxes gives the Result it gives on the taps themselves (NaN row: no box)."""
    from lastvit_eval.evaluators.base import SplitInputs

    ev = CorLoc(CorLoc.Options(method="last-votes"))
    ev.gt = {"a": np.array([[0.0, 0.0, 10.0, 10.0]]), "b": np.array([[2.0, 2.0, 6.0, 6.0]])}
    ev.sizes = {"a": (16, 16), "b": (16, 16)}
    ev.full, ev.patch, ev.grid, ev.resize, ev.crop = True, 8, (2, 2), None, None
    votes = np.array([[5.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # b: flat votes, nothing above mean + std

    class P:
        name = "last-k1"

    def result(arrays):
        from lastvit_eval.evaluators.base import Inputs

        return ev.evaluate(Inputs(pooling=P, test=SplitInputs(["a", "b"], np.zeros(2), arrays), train=None,
                                  classes=[], plan=None))

    reduced = ev.reduce({"votes": votes}, ["a", "b"])
    assert np.isnan(reduced["box"][1]).all() and reduced["box"][0].tolist() == [0.0, 0.0, 8.0, 8.0]
    a, b = result({"votes": votes}), result(reduced)
    assert a.rows.equals(b.rows) and a.metrics["corloc.hit"].value == b.metrics["corloc.hit"].value == 50.0
