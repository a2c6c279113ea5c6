"""Hub names resolve through each library's cache; offline and uncached is one clear error, never random weights."""

from __future__ import annotations

import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torchvision.models import VisionTransformer

from lastvit_eval.errors import InputError
from lastvit_eval.models import load_model


def standin_vit_b_16(seed: int = 0) -> VisionTransformer:
    """vit_b_16's width, heads and patch (what the library config fixes), one block and 32 px to stay small."""
    torch.manual_seed(seed)
    return VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=12, hidden_dim=768, mlp_dim=64,
                             num_classes=1000).eval()


def standin_clip_b_16(seed: int = 0, quick_gelu: bool = False) -> CLIP:
    """open_clip ViT-B-16's vision width / heads / patch, one block, a tiny text tower."""
    torch.manual_seed(seed)
    m = CLIP(32, vision_cfg=CLIPVisionCfg(layers=1, width=768, head_width=64, mlp_ratio=0.25, patch_size=16,
                                          image_size=32),
             text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
             quick_gelu=quick_gelu)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "ln_" in name or "proj" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    for var in ("TORCH_HOME", "HF_HOME", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "home"


@pytest.mark.parametrize("name", ["torchvision:vit_b_16", "timm:vit_base_patch16_224.dino", "openclip:ViT-B-16/openai"])
def test_offline_uncached_is_one_clear_error(offline_empty_cache, name):
    with pytest.raises(InputError) as e:
        load_model(name)
    msg = str(e.value)
    assert name in msg and "offline" in msg and "not in the local cache" in msg and "--checkpoint" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(("name", "match"), [("torchvision:alexnet", "only torchvision ViTs"),
                                             ("torchvision:vit_b_16/NOPE", "unknown weights 'NOPE'"),
                                             ("timm:no_such_model_xyz", "no pretrained weights"),
                                             ("openclip:ViT-B-16/nope", "no weights 'nope'")])
def test_bad_hub_names(offline_empty_cache, name, match):
    with pytest.raises(InputError, match=match):
        load_model(name)


def test_torchvision_weights_from_the_torch_hub_cache(offline_empty_cache):
    """A file in torch.hub's cache is used as is; the transform comes from the weights enum."""
    ckpt = offline_empty_cache / "hub" / "checkpoints" / "vit_b_16-c867db91.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(standin_vit_b_16().state_dict(), ckpt)  # stands in for the real file (shapes inferred)
    loaded = load_model("torchvision:vit_b_16")
    assert loaded.arch.family == "torchvision" and loaded.source == "torchvision:vit_b_16"
    t = loaded.transform
    assert (t.resize, t.crop, t.interpolation) == (256, 224, "bilinear")
    assert loaded.sha256 and str(ckpt) in loaded.keys.steps[0]
    assert (loaded.arch.heads, loaded.arch.heads_source, loaded.arch.config) == (12, "library config",
                                                                                 "torchvision vit_b_16")


def test_openclip_weights_from_the_hf_cache(offline_empty_cache):
    """An HF-cache layout (refs/main -> snapshots/<rev>/file) is found; the openai tag implies QuickGELU."""
    repo = offline_empty_cache / "hub" / "models--timm--vit_base_patch16_clip_224.openai"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    ref = standin_clip_b_16(seed=7, quick_gelu=True)
    torch.save(ref.state_dict(), snap / "open_clip_pytorch_model.bin")
    loaded = load_model("openclip:ViT-B-16/openai")
    assert loaded.backbone.details["quick_gelu"] is True
    assert (loaded.arch.heads, loaded.arch.heads_source) == (12, "library config")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        emb = loaded.backbone.project(loaded.backbone.tokens(x)[:, 0])
        assert (emb - ref.encode_image(x)).abs().max() < 1e-4


TIMM_NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"


def _timm_in_hf_cache(home, sd) -> None:
    from safetensors.torch import save_file

    repo = home / "hub" / f"models--timm--{TIMM_NAME}"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(snap / "model.safetensors"))


def test_timm_num_heads_checked_and_weights_finite(offline_empty_cache):
    """timm: names build from timm's config: --num-heads may confirm it, never change it; NaN weights refused."""
    import timm

    from lastvit_eval.models import LoadOptions

    torch.manual_seed(0)
    ref = timm.create_model(TIMM_NAME, pretrained=False).eval()
    _timm_in_hf_cache(offline_empty_cache, ref.state_dict())
    name = f"timm:{TIMM_NAME}"
    loaded = load_model(name)
    assert (loaded.arch.heads, loaded.arch.heads_source) == (3, "library config")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (loaded.backbone.tokens(x) - ref.forward_features(x)).abs().max() < 1e-4
    assert load_model(name, LoadOptions(num_heads=3)).arch.heads_source == "--num-heads"
    with pytest.raises(InputError) as e:
        load_model(name, LoadOptions(num_heads=4))
    msg = str(e.value)
    assert "--num-heads 4 contradicts timm's config" in msg and "(192, 3, 16, 16)" in msg and "\n" not in msg


def test_timm_non_finite_weights(offline_empty_cache):
    import timm

    sd = timm.create_model(TIMM_NAME, pretrained=False).state_dict()
    sd["blocks.1.attn.proj.weight"][0, 0] = float("nan")
    _timm_in_hf_cache(offline_empty_cache, sd)
    with pytest.raises(InputError) as e:
        load_model(f"timm:{TIMM_NAME}")
    msg = str(e.value)
    assert msg.startswith(f"timm:{TIMM_NAME}: tensor 'blocks.1.attn.proj.weight'") and "1 NaN" in msg
