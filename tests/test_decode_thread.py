"""Decoding the next batch in a thread (0 decode processes): same batches, same order, same errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import lastvit_eval.engine.runner as runner
from lastvit_eval.engine.device import EngineSpec
from lastvit_eval.engine.extract import extract
from lastvit_eval.engine.taps import TapRequest
from lastvit_eval.models import load_model
from lastvit_eval.pooling import PoolingSpec


def test_prefetched_keeps_order_and_runs_ahead_in_another_thread():
    threads = []

    def items():
        for i in range(5):
            threads.append(threading.current_thread().name)
            yield i

    assert list(runner.prefetched(items())) == [0, 1, 2, 3, 4]
    assert all(t.startswith("decode") for t in threads)
    assert list(runner.prefetched(iter([]))) == []


def test_prefetched_raises_the_producers_error_and_stops_when_the_consumer_stops():
    def failing():
        yield 1
        raise ValueError("bad batch")

    it = runner.prefetched(failing())
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad batch"):
        next(it)
    made = []

    def endless():
        i = 0
        while True:
            made.append(i)
            yield i
            i += 1

    gen = runner.prefetched(endless())
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()  # waits for the one batch in flight, asks for no more
    assert len(made) <= 4


def test_thread_decode_gives_the_same_features_and_bad_images(detectron2_ckpt, imagenet_root, monkeypatch):
    model = load_model(detectron2_ckpt)
    paths = sorted((imagenet_root / "val").rglob("*.JPEG"))
    bad = imagenet_root / "val" / "broken.JPEG"
    bad.write_bytes(b"not a jpeg")
    paths.insert(2, bad)
    request = TapRequest((PoolingSpec("cls"),), frozenset({"pooled", "patch_scores"}))
    engine = EngineSpec(device="cpu", batch_size=2, workers=0)
    got = {}
    for flag in (True, False):
        monkeypatch.setattr(runner, "THREAD_DECODE", flag)
        got[flag] = extract(model, paths, request, engine, store=None, progress=False)
    a, b = got[True], got[False]
    assert np.array_equal(a.index, b.index) and a.bad == b.bad and [p for p, _ in a.bad] == [str(bad)]
    for k in b.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)
