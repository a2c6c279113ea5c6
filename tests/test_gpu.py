"""CUDA-only paths: device extraction, GPU JPEG decode parity. Skipped on machines without CUDA."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lastvit_eval.engine.dataset import load_rgb
from lastvit_eval.engine.device import EngineSpec
from lastvit_eval.engine.extract import extract
from lastvit_eval.engine.gpu_decode import decode_batch
from lastvit_eval.engine.store import StoreSpec
from lastvit_eval.engine.taps import TapRequest
from lastvit_eval.models import load_model
from lastvit_eval.pooling import PoolingSpec

REQUEST = TapRequest((PoolingSpec("last"),), frozenset({"patch_scores", "pooled"}))


@pytest.fixture
def setup(detectron2_ckpt, imagenet_root):
    return load_model(detectron2_ckpt), sorted((imagenet_root / "val").rglob("*.JPEG"))


@pytest.mark.gpu
def test_cuda_matches_cpu(setup, tmp_path):
    model, paths = setup
    cpu = extract(model, paths, REQUEST, EngineSpec(device="cpu", workers=0), progress=False)
    gpu = extract(model, paths, REQUEST, EngineSpec(device="cuda", workers=0, channels_last=True), progress=False,
                  store=StoreSpec(dir=tmp_path / "c", shard_size=3))
    assert np.array_equal(cpu.index, gpu.index)
    for k in cpu.arrays:
        np.testing.assert_allclose(gpu.arrays[k], cpu.arrays[k], atol=1e-3, err_msg=k)


@pytest.mark.gpu
def test_gpu_decode_close_to_pil(setup, tmp_path):
    model, paths = setup
    data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    ok, batch, bad = decode_batch(data, paths, model.transform, torch.device("cuda"))
    assert ok == list(range(len(paths))) and bad == []
    ref = torch.stack([model.transform.pixels(load_rgb(p)) for p in paths]).cuda()
    assert batch.shape == ref.shape and batch.dtype == torch.uint8
    # nvJPEG vs libjpeg and tensor vs PIL resize: small pixel differences, never large ones
    assert (batch.int() - ref.int()).abs().float().mean() < 3
    engine = EngineSpec(device="cuda", workers=0, decode="gpu")
    feats = extract(model, paths, REQUEST, engine, progress=False)
    parity = feats.engine_info["gpu_decode_parity"]
    assert parity["images"] == len(paths) and parity["patch_hit_argmax_agreement"] >= 0.75
    assert len(feats.index) == len(paths)
    cpu = extract(model, paths, REQUEST, dataclasses.replace(engine, decode="cpu"), progress=False)
    np.testing.assert_allclose(feats.arrays["pooled/last-k1"], cpu.arrays["pooled/last-k1"], atol=0.5)
