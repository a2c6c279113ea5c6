"""torchvision family: every on-disk form loads strictly and reproduces the reference forward pass."""

from __future__ import annotations

import argparse
import os

import pytest
import torch
from safetensors.torch import save_file

from lastvit_eval.errors import InputError
from lastvit_eval.models import LoadOptions, load_model
from lastvit_eval.pooling import PoolingSpec, pool

from .conftest import tiny_vit


def _reference(model, x):
    """torchvision's own forward: logits, and the CLS token after encoder.ln via a hook."""
    seen = {}
    h = model.encoder.ln.register_forward_hook(lambda m, i, o: seen.setdefault("tokens", o))
    logits = model(x)
    h.remove()
    return logits, seen["tokens"]


@pytest.mark.parametrize("form", ["plain", "detectron2", "ddp", "state_dict_wrapper", "safetensors"])
def test_forms_load_and_match_reference(tmp_path, form):
    ref = tiny_vit(num_classes=7, seed=3)
    sd = ref.state_dict()
    path = tmp_path / ("ck.safetensors" if form == "safetensors" else "ck.pth")
    if form == "plain":
        torch.save(sd, path)
    elif form == "detectron2":
        torch.save({"model": {"model." + k: v for k, v in sd.items()}, "iteration": 5}, path)
    elif form == "ddp":
        torch.save({"module." + k: v for k, v in sd.items()}, path)
    elif form == "state_dict_wrapper":
        torch.save({"state_dict": {"module.model." + k: v for k, v in sd.items()}}, path)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    loaded = load_model(path)
    a = loaded.arch
    assert (a.family, a.image_size, a.patch_size, a.width, a.depth, a.heads, a.mlp_dim, a.num_classes) == (
        "torchvision", 32, 8, 192, 2, 3, 96, 7)
    assert loaded.sha256 and len(loaded.sha256) == 64
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref_logits, ref_tokens = _reference(ref, x)
        tokens = loaded.backbone.tokens(x)
        cls = pool(tokens, 1, PoolingSpec("cls")).token
        logits = loaded.backbone.head(cls)
    assert (cls - ref_tokens[:, 0]).abs().max() < 1e-4
    assert (logits - ref_logits).abs().max() < 1e-4
    assert (loaded.transform.resize, loaded.transform.crop, loaded.transform.interpolation) == (36, 32, "bilinear")


def test_fp16_checkpoint_is_upcast(tmp_path):
    ref = tiny_vit(seed=1)
    torch.save({k: v.half() for k, v in ref.state_dict().items()}, tmp_path / "h.pth")
    loaded = load_model(tmp_path / "h.pth")
    assert all(p.dtype == torch.float32 for p in loaded.backbone.parameters())


def _save(tmp_path, sd):
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    return path


def test_missing_renamed_and_wrong_shape_keys_are_named(tmp_path):
    sd = tiny_vit().state_dict()
    removed = dict(sd)
    removed.pop("encoder.layers.encoder_layer_1.ln_2.bias")
    with pytest.raises(InputError, match="missing keys: encoder.layers.encoder_layer_1.ln_2.bias"):
        load_model(_save(tmp_path, removed))
    renamed = dict(sd)
    renamed["encoder.ln.scale"] = renamed.pop("encoder.ln.weight")
    with pytest.raises(InputError, match=r"missing keys: encoder\.ln\.weight; unexpected keys: encoder\.ln\.scale"):
        load_model(_save(tmp_path, renamed))
    wrong = dict(sd)
    wrong["encoder.layers.encoder_layer_0.mlp.3.weight"] = torch.zeros(192, 95)
    with pytest.raises(InputError, match=r"encoder_layer_0\.mlp\.3\.weight.*shape"):
        load_model(_save(tmp_path, wrong))


def test_ignore_keys_drops_the_head(tmp_path):
    sd = tiny_vit().state_dict()
    sd["extra.thing"] = torch.zeros(1)
    path = _save(tmp_path, sd)
    with pytest.raises(InputError, match="unexpected keys: extra.thing"):
        load_model(path)
    loaded = load_model(path, LoadOptions(ignore_keys=("extra", "heads.head")))
    assert loaded.arch.num_classes is None and loaded.backbone.head(torch.zeros(1, 192)) is None
    assert loaded.keys.ignored == ["heads.head.bias", "heads.head.weight", "extra.thing"] or \
        sorted(loaded.keys.ignored) == ["extra.thing", "heads.head.bias", "heads.head.weight"]


def test_pickled_payload_needs_trust(tmp_path):
    path = tmp_path / "with_args.pth"
    torch.save({"model": tiny_vit().state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(InputError, match="--trust-checkpoint"):
        load_model(path)
    assert load_model(path, LoadOptions(trust=True)).arch.family == "torchvision"


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch " + os.environ.get("EVIL_MARKER", "/nonexistent/x"),))


def test_code_executing_pickle_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny_vit().state_dict(), "x": _Evil()}, path)
    with pytest.raises(InputError, match="--trust-checkpoint"):
        load_model(path)
    assert not marker.exists()


def test_unknown_width_needs_num_heads(tmp_path):
    from torchvision.models import VisionTransformer

    m = VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=4, hidden_dim=64, mlp_dim=32)
    path = _save(tmp_path, m.state_dict())
    with pytest.raises(InputError, match="--num-heads"):
        load_model(path)
    assert load_model(path, LoadOptions(num_heads=4)).arch.heads == 4


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_garbage_files_are_input_errors(tmp_path, content):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(InputError, match="x.pth"):
        load_model(path)


def test_unrecognised_state_dict(tmp_path):
    path = _save(tmp_path, {"foo.weight": torch.zeros(2)})
    with pytest.raises(InputError, match="unrecognised checkpoint format"):
        load_model(path)
