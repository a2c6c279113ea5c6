"""CLIP family: training checkpoints, OpenAI-style state dicts and TorchScript archives match open_clip."""

from __future__ import annotations

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from tiny_models import tiny_clip

from lastvit_eval.errors import InputError
from lastvit_eval.models import LoadOptions, load_model
from lastvit_eval.models.clip_text import Prompts, build_classifier, imagenet_prompts
from lastvit_eval.pooling import PoolingSpec, pool

MARKERS = {"input_resolution": torch.tensor(32), "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)}


def _reference(clip, x):
    """open_clip's own forward: encode_image, and the class token after ln_post (via a hook)."""
    seen = {}
    h = clip.visual.ln_post.register_forward_hook(lambda m, i, o: seen.setdefault("tokens", o))
    with torch.no_grad():
        emb = clip.encode_image(x)
    h.remove()
    return emb, seen["tokens"][:, 0]


def _check(loaded, ref, quick_gelu):
    x = torch.randn(2, 3, 32, 32)
    ref_emb, ref_cls = _reference(ref, x)
    with torch.no_grad():
        cls = pool(loaded.backbone.tokens(x), 1, PoolingSpec("cls")).token
        emb = loaded.backbone.project(cls)
    assert (cls - ref_cls).abs().max() < 1e-4
    assert (emb - ref_emb).abs().max() < 1e-4
    a = loaded.arch
    assert (a.family, a.image_size, a.patch_size, a.width, a.depth, a.heads, a.embed_dim) == (
        "openclip", 32, 8, 192, 2, 3, 32)
    assert loaded.backbone.details["quick_gelu"] is quick_gelu
    t = loaded.transform
    assert (t.resize, t.crop, t.interpolation, t.mean[0]) == (32, 32, "bicubic", 0.48145466)


@pytest.mark.parametrize(("name", "quick_gelu"), [("2024_01_01-model_tiny-lr_0.0005-b_256", False),
                                                  ("2024_01_01-model_tiny-quickgelu-lr_0.0005", True)])
def test_openclip_training_checkpoint(tmp_path, name, quick_gelu):
    ref = tiny_clip(seed=1, quick_gelu=quick_gelu)
    path = tmp_path / "epoch_32.pt"
    torch.save({"epoch": 32, "name": name, "state_dict": {"module." + k: v for k, v in ref.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": []}}, path)
    loaded = load_model(path)
    assert loaded.keys.format.startswith("OpenCLIP training checkpoint")
    assert "stripped prefix 'module.'" in loaded.keys.steps
    _check(loaded, ref, quick_gelu)


def test_openai_state_dict_is_quick_gelu(tmp_path):
    ref = tiny_clip(seed=2, quick_gelu=True)
    path = tmp_path / "ViT-B-16.pth"
    torch.save({**{k: v.half() for k, v in ref.state_dict().items()}, **MARKERS}, path)  # OpenAI ships fp16
    loaded = load_model(path)
    assert sorted(loaded.keys.dropped) == sorted(MARKERS)
    x = torch.randn(2, 3, 32, 32)
    ref16 = tiny_clip(seed=2, quick_gelu=True)
    ref16.load_state_dict({k: v.half().float() for k, v in ref.state_dict().items()})
    _check(loaded, ref16, True)
    # the activation matters: the same weights read as GELU give other features
    gelu = load_model(path, LoadOptions(quick_gelu=False))
    with torch.no_grad():
        a = loaded.backbone.tokens(x)
        b = gelu.backbone.tokens(x)
    assert (a - b).abs().max() > 1e-3


def test_plain_openclip_state_dict_defaults_to_gelu(tmp_path):
    ref = tiny_clip(seed=3)
    torch.save(ref.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    _check(load_model(tmp_path / "open_clip_pytorch_model.bin"), ref, False)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_torchscript_archive(tmp_path):
    ref = tiny_clip(seed=4, quick_gelu=True)
    scripted = tiny_clip(seed=4, quick_gelu=True)
    del scripted.context_length, scripted.vocab_size  # OpenAI's archives carry these as tensors
    for k, v in MARKERS.items():
        scripted.register_buffer(k, v)
    x = torch.randn(1, 3, 32, 32)
    traced = torch.jit.trace_module(scripted, {"encode_image": (x,)})
    path = tmp_path / "ViT-B-16.pt"
    traced.save(str(path))
    with pytest.raises(InputError, match="TorchScript.*--trust-checkpoint"):
        load_model(path)
    loaded = load_model(path, LoadOptions(trust=True))
    _check(loaded, ref, True)


def test_missing_renamed_and_wrong_shape_keys_are_named(tmp_path):
    sd = tiny_clip().state_dict()
    path = tmp_path / "bad.pth"
    removed = dict(sd)
    removed.pop("visual.transformer.resblocks.1.ln_2.bias")
    torch.save(removed, path)
    with pytest.raises(InputError, match=r"missing keys: visual\.transformer\.resblocks\.1\.ln_2\.bias"):
        load_model(path)
    renamed = dict(sd)
    renamed["visual.ln_post.scale"] = renamed.pop("visual.ln_post.weight")
    torch.save(renamed, path)
    with pytest.raises(InputError, match=r"missing keys: visual\.ln_post\.weight; unexpected keys: visual\.ln_post\."
                                         r"scale"):
        load_model(path)
    wrong = dict(sd)
    wrong["visual.transformer.resblocks.0.mlp.c_proj.weight"] = torch.zeros(192, 10)
    torch.save(wrong, path)
    with pytest.raises(InputError, match=r"resblocks\.0\.mlp\.c_proj\.weight.*shape"):
        load_model(path)


def _manual_classifier(clip, names, templates):
    """encode_text -> normalize -> mean over templates -> normalize, by hand."""
    tok = SimpleTokenizer(context_length=77)
    cols = []
    with torch.no_grad():
        for c in names:
            e = clip.encode_text(tok([t.replace("{c}", c) for t in templates]))
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(dim=0)
            cols.append(m / m.norm())
    return torch.stack(cols, dim=1).numpy()


def test_zero_shot_classifier_matches_manual_reference(tmp_path, monkeypatch):
    ref = tiny_clip(seed=5)
    torch.save(ref.state_dict(), tmp_path / "c.pth")
    loaded = load_model(tmp_path / "c.pth")
    names = tuple(f"class {i}" for i in range(13))  # 13: not a multiple of open_clip's batch of 10
    prompts = Prompts(names, ("a photo of a {c}.", "a drawing of the {c}", "{c}"), "test")
    w = build_classifier(loaded, prompts)
    assert w.shape == (32, 13)
    assert abs(w - _manual_classifier(ref, names, prompts.templates)).max() < 1e-5
    other = build_classifier(loaded, Prompts(names, prompts.templates[:2], "test"))
    assert abs(other - w).max() > 1e-4


def test_zero_shot_needs_clip(tmp_path):
    from tiny_models import tiny_timm

    torch.save(tiny_timm().state_dict(), tmp_path / "d.pth")
    with pytest.raises(InputError, match="CLIP"):
        build_classifier(load_model(tmp_path / "d.pth"), imagenet_prompts())


def test_open_clip_imagenet_prompts():
    p = imagenet_prompts()
    assert len(p.classnames) == 1000 and len(p.templates) == 80
    assert all("{c}" in t for t in p.templates) and p.classnames[0] == "tench"
