"""DINO family: main_dino teacher/student and bare backbones load strictly and match timm's forward."""

from __future__ import annotations

import argparse
import os

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from tiny_models import tiny_timm

from lastvit_eval.errors import InputError
from lastvit_eval.models import LoadOptions, load_model
from lastvit_eval.models.dino_vit import infer_arch
from lastvit_eval.pooling import PoolingSpec, pool

DINO_HEAD = {"head.mlp.0.weight": torch.randn(16, 192), "head.mlp.0.bias": torch.zeros(16),
             "head.last_layer.weight_g": torch.ones(32, 1), "head.last_layer.weight_v": torch.randn(32, 16)}


def main_dino(teacher, student, arch: str = "vit_tiny", patch_size: int = 8) -> dict:
    """A main_dino checkpoint; `args` is DINO's pickled Namespace (its arch fixes width and heads)."""
    return {
        "teacher": {**{"backbone." + k: v for k, v in teacher.state_dict().items()}, **DINO_HEAD},
        "student": {**{"module.backbone." + k: v for k, v in student.state_dict().items()},
                    **{"module." + k: v for k, v in DINO_HEAD.items()}},
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 100,
        "args": argparse.Namespace(arch=arch, patch_size=patch_size, out_dim=65536),
        "dino_loss": {"center": torch.zeros(1, 32)},
    }


def _cls(loaded, x):
    with torch.no_grad():
        return pool(loaded.backbone.tokens(x), loaded.backbone.num_prefix_tokens, PoolingSpec("cls")).token


@pytest.mark.parametrize("key", [None, "teacher", "student"])
def test_main_dino_checkpoint(tmp_path, key):
    teacher, student = tiny_timm(seed=1), tiny_timm(seed=2)
    path = tmp_path / "checkpoint0100.pth"
    torch.save(main_dino(teacher, student), path)
    with pytest.raises(InputError, match="--trust-checkpoint"):  # `args` is a pickled Namespace
        load_model(path)
    loaded = load_model(path, LoadOptions(trust=True, checkpoint_key=key))
    ref = student if key == "student" else teacher
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ref.forward_features(x)[:, 0]
    assert (_cls(loaded, x) - expected).abs().max() < 1e-4
    a = loaded.arch
    assert (a.family, a.image_size, a.patch_size, a.width, a.depth, a.heads, a.mlp_dim, a.num_classes) == (
        "dino", 32, 8, 192, 2, 3, 768, None)
    assert loaded.keys.format.startswith("main_dino")
    assert sorted(loaded.keys.dropped) == sorted(DINO_HEAD)
    assert loaded.backbone.head(expected) is None
    t = loaded.transform
    assert (t.resize, t.crop, t.interpolation, t.mean) == (36, 32, "bicubic", (0.485, 0.456, 0.406))


def test_unknown_checkpoint_key(tmp_path):
    path = tmp_path / "c.pth"
    torch.save(main_dino(tiny_timm(), tiny_timm()), path)
    with pytest.raises(InputError, match="--checkpoint-key 'ema'"):
        load_model(path, LoadOptions(trust=True, checkpoint_key="ema"))


@pytest.mark.parametrize("container", ["pth", "safetensors"])
def test_bare_backbone(tmp_path, container):
    ref = tiny_timm(seed=5)
    sd = ref.state_dict()
    path = tmp_path / f"dino_deitsmall8_pretrain.{container}"
    if container == "pth":
        torch.save(sd, path)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    loaded = load_model(path)  # plain tensors: no trust needed
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (_cls(loaded, x) - ref.forward_features(x)[:, 0]).abs().max() < 1e-4
    assert loaded.keys.dropped == [] and loaded.arch.family == "dino"


def test_timm_layout_with_classifier_head(tmp_path):
    ref = tiny_timm(seed=6, num_classes=7)
    torch.save(ref.state_dict(), tmp_path / "c.pth")
    loaded = load_model(tmp_path / "c.pth")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = loaded.backbone.head(_cls(loaded, x))
        assert (logits - ref(x)).abs().max() < 1e-4
    assert loaded.arch.num_classes == 7


@pytest.mark.parametrize(("width", "patch", "name", "heads"),
                         [(384, 16, "vit_s_16", 6), (768, 16, "vit_b_16", 12), (384, 8, "vit_s_8", 6),
                          (768, 8, "vit_b_8", 12)])
def test_released_sizes_inferred_from_shapes(width, patch, name, heads):
    with torch.device("meta"):  # shapes only: no memory, no time
        m = VisionTransformer(img_size=224, patch_size=patch, embed_dim=width, depth=12, num_heads=heads,
                              num_classes=0)
    arch, kwargs = infer_arch(m.state_dict(), LoadOptions(), "x")
    assert (arch.name, arch.image_size, arch.patch_size, arch.depth, arch.heads, arch.mlp_dim) == (
        name, 224, patch, 12, heads, 4 * width)
    assert arch.grid == (224 // patch, 224 // patch) and kwargs["qkv_bias"]


def _save(tmp_path, sd):
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    return path


def test_missing_renamed_and_wrong_shape_keys_are_named(tmp_path):
    sd = tiny_timm().state_dict()
    removed = dict(sd)
    removed.pop("blocks.1.norm2.bias")
    with pytest.raises(InputError, match=r"missing keys: blocks\.1\.norm2\.bias"):
        load_model(_save(tmp_path, removed))
    renamed = dict(sd)
    renamed["norm.scale"] = renamed.pop("norm.weight")
    with pytest.raises(InputError, match=r"missing keys: norm\.weight; unexpected keys: norm\.scale"):
        load_model(_save(tmp_path, renamed))
    wrong = dict(sd)
    wrong["blocks.0.mlp.fc2.weight"] = torch.zeros(192, 700)
    with pytest.raises(InputError, match=r"blocks\.0\.mlp\.fc2\.weight.*shape"):
        load_model(_save(tmp_path, wrong))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch " + os.environ.get("EVIL_MARKER", "/nonexistent/x"),))


def test_code_executing_main_dino_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    ck = main_dino(tiny_timm(), tiny_timm())
    ck["args"] = _Evil()
    path = tmp_path / "evil.pth"
    torch.save(ck, path)
    with pytest.raises(InputError, match="--trust-checkpoint"):
        load_model(path)
    assert not marker.exists()
