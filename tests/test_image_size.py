"""--image-size for every family: interpolated the way each library loads weights at a new size, checked
against that library's own path (a model built at the new size, loaded through its resize function)."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from conftest import tiny_vit
from open_clip.model import CLIP, resize_pos_embed
from tiny_models import tiny_clip, tiny_timm
from torchvision.models import VisionTransformer as TorchvisionViT
from torchvision.models.vision_transformer import interpolate_embeddings
from typer.testing import CliRunner

from lastvit_eval.app import app
from lastvit_eval.engine.store import model_identity
from lastvit_eval.errors import InputError
from lastvit_eval.models import LoadOptions, load_model
from lastvit_eval.pooling import PoolingSpec, pool

NEW = 48  # the tiny models are 32 px at patch 8: 4x4 -> 6x6


def _cls(loaded, x):
    with torch.no_grad():
        return pool(loaded.backbone.tokens(x), loaded.backbone.num_prefix_tokens, PoolingSpec("cls")).token


def test_torchvision_interpolate_embeddings(tmp_path):
    ref = tiny_vit()
    path = tmp_path / "tv.pth"
    torch.save(ref.state_dict(), path)
    loaded = load_model(path, LoadOptions(image_size=NEW))
    big = TorchvisionViT(image_size=NEW, patch_size=8, num_layers=2, num_heads=3, hidden_dim=192, mlp_dim=96,
                         num_classes=10).eval()
    big.load_state_dict(interpolate_embeddings(NEW, 8, ref.state_dict()))
    x = torch.randn(2, 3, NEW, NEW)
    with torch.no_grad():
        assert (loaded.backbone.head(_cls(loaded, x)) - big(x)).abs().max() < 1e-4
    a, t = loaded.arch, loaded.transform
    assert (a.image_size, a.grid, a.native_image_size, t.crop, t.resize) == (NEW, (6, 6), 32, NEW, NEW * 256 // 224)
    assert any("interpolate_embeddings" in s for s in loaded.keys.steps)


def test_dino_timm_resample(tmp_path):
    ref = tiny_timm()
    path = tmp_path / "dino.pth"
    torch.save(ref.state_dict(), path)
    loaded = load_model(path, LoadOptions(image_size=NEW))
    big = timm.models.vision_transformer.VisionTransformer(img_size=NEW, patch_size=8, embed_dim=192, depth=2,
                                                           num_heads=3, num_classes=0).eval()
    big.load_state_dict(timm.models.vision_transformer.checkpoint_filter_fn(ref.state_dict(), big))
    x = torch.randn(2, 3, NEW, NEW)
    with torch.no_grad():
        assert (loaded.backbone.tokens(x) - big.forward_features(x)).abs().max() < 1e-4
    assert (loaded.arch.grid, loaded.transform.crop, loaded.transform.interpolation) == ((6, 6), NEW, "bicubic")


def test_openclip_resize_pos_embed(tmp_path):
    ref = tiny_clip()
    path = tmp_path / "clip.pth"
    torch.save(ref.state_dict(), path)
    loaded = load_model(path, LoadOptions(image_size=NEW))
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    big = CLIP(32, vision_cfg=CLIPVisionCfg(layers=2, width=192, head_width=64, patch_size=8, image_size=NEW),
               text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1)).eval()
    sd = dict(ref.state_dict())
    resize_pos_embed(sd, big)
    big.load_state_dict(sd)
    x = torch.randn(2, 3, NEW, NEW)
    with torch.no_grad():
        assert (loaded.backbone.project(_cls(loaded, x)) - big.encode_image(x)).abs().max() < 1e-4
    t = loaded.transform
    assert (loaded.arch.grid, t.resize, t.crop) == ((6, 6), NEW, NEW)  # CLIP: resize == crop


@pytest.mark.parametrize("maker", [tiny_vit, tiny_timm, tiny_clip])
def test_size_not_a_multiple_of_the_patch_is_one_line(tmp_path, maker):
    path = tmp_path / "m.pth"
    torch.save(maker().state_dict(), path)
    with pytest.raises(InputError, match=r"m.pth: --image-size 50 is not a positive multiple of the patch size 8 "
                                         r"\(e.g. 48\)$"):
        load_model(path, LoadOptions(image_size=50))


def test_image_size_changes_the_store_key_and_shows_in_inspect(tmp_path):
    path = tmp_path / "dino.pth"
    torch.save(tiny_timm().state_dict(), path)
    a, b = load_model(path), load_model(path, LoadOptions(image_size=NEW))
    assert model_identity(a) != model_identity(b)
    assert model_identity(b)["load_options"]["image_size"] == NEW
    r = CliRunner().invoke(app, ["inspect", str(path), "--image-size", str(NEW), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert (info["arch"]["image_size"], info["arch"]["native_image_size"], info["transform"]["crop"]) == (NEW, 32, NEW)
    r = CliRunner().invoke(app, ["inspect", str(path), "--image-size", "50"])
    assert r.exit_code == 2 and "--image-size 50 is not a positive multiple of the patch size 8" in r.output
