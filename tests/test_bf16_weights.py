"""bf16 on CPU: linear weights converted once give exactly autocast's numbers; the loaded model is untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_vit
from tiny_models import tiny_clip, tiny_timm

from lastvit_eval.engine.device import EngineSpec, with_low_precision_linears
from lastvit_eval.engine.extract import extract
from lastvit_eval.engine.taps import TapRequest, forward_taps
from lastvit_eval.models import load_model
from lastvit_eval.pooling import PoolingSpec


def _checkpoint(kind: str, tmp_path):
    path = tmp_path / f"{kind}.pth"
    if kind == "torchvision":
        torch.save({"model": {"model." + k: v for k, v in tiny_vit().state_dict().items()}}, path)
    elif kind == "timm":
        torch.save(tiny_timm(seed=3, num_classes=5).state_dict(), path)
    else:
        torch.save({"state_dict": {"module." + k: v for k, v in tiny_clip().state_dict().items()}}, path)
    return load_model(path)


@pytest.mark.parametrize("kind", ["torchvision", "timm", "openclip"])
def test_converted_linears_give_autocasts_numbers_bit_for_bit(kind, tmp_path):
    model = _checkpoint(kind, tmp_path)
    bb = model.backbone
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    fast = with_low_precision_linears(bb, "bf16")
    assert any(p.dtype == torch.bfloat16 for p in fast.parameters())
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        ref, got = bb.tokens(x), fast.tokens(x)
    assert torch.equal(ref, got)
    assert all(p.dtype == torch.float32 for p in bb.parameters())  # the loaded model stays fp32
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())


def test_extract_bf16_equals_autocast_over_the_loaded_model(detectron2_ckpt, imagenet_root):
    model = load_model(detectron2_ckpt)
    paths = sorted((imagenet_root / "val").rglob("*.JPEG"))[:4]
    request = TapRequest((PoolingSpec("last"), PoolingSpec("cls")), frozenset({"pooled", "patch_scores", "logits"}))
    feats = extract(model, paths, request, EngineSpec(device="cpu", dtype="bf16", batch_size=4, workers=0),
                    store=None, progress=False)
    from lastvit_eval.data.decode import load_rgb

    pixels = torch.stack([model.transform.pixels(load_rgb(p)) for p in paths])
    with torch.inference_mode():
        ref = forward_taps(model, model.transform.normalize(pixels), request, "bf16")  # autocast, original weights
    assert sorted(feats.arrays) == sorted(ref)
    for k, v in ref.items():
        np.testing.assert_array_equal(feats.arrays[k], v.numpy(), err_msg=k)


def test_the_runner_forwards_through_the_converted_copy_on_cpu_bf16_only(detectron2_ckpt):
    from lastvit_eval.engine.runner import BatchRunner

    model = load_model(detectron2_ckpt)
    request = TapRequest((PoolingSpec("cls"),), frozenset({"pooled"}))
    dtypes = {}
    for dtype in ("bf16", "fp32"):
        r = BatchRunner(model, request, EngineSpec(device="cpu", dtype=dtype))
        r.setup()
        dtypes[dtype] = {p.dtype for p in r.eager_tokens.__self__.parameters()}
    assert dtypes == {"bf16": {torch.bfloat16, torch.float32}, "fp32": {torch.float32}}
