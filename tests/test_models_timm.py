"""timm files (DeiT distilled, EVA02, plain ViT with pretrained_cfg) against timm's own forward; --arch errors."""

from __future__ import annotations

import pytest
import timm
import torch

from lastvit_eval.errors import InputError
from lastvit_eval.models import LoadOptions, load_model
from lastvit_eval.pooling import PoolingSpec, pool


def reference(name: str, img_size: int, seed: int = 0, num_classes: int = 10,
              words: tuple[str, ...] = ("norm", "head", "token", "pos_embed"), **kw) -> torch.nn.Module:
    """timm's own model (`kw` to create_model), parameters whose names hold one of `words` perturbed (random
    init leaves norms at identity and heads / tokens at zero)."""
    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=img_size, **kw)
    with torch.no_grad():
        for k, p in m.named_parameters():
            if any(w in k for w in words):
                p.add_(torch.randn_like(p) * 0.3)
    return m.eval()


@pytest.fixture(scope="module")
def deit():
    return reference("deit_tiny_distilled_patch16_224", 64)


@pytest.fixture(scope="module")
def eva():
    return reference("eva02_tiny_patch14_224", 56, seed=1)


def _check_against(loaded, ref, size):
    x = torch.randn(2, 3, size, size)
    n = ref.num_prefix_tokens
    with torch.no_grad():
        ref_tokens = ref.forward_features(x)
        tokens = loaded.backbone.tokens(x)
        cls = pool(tokens, loaded.backbone.num_prefix_tokens, PoolingSpec("cls")).token
        gap = pool(tokens, loaded.backbone.num_prefix_tokens, PoolingSpec("gap")).token
    assert loaded.backbone.num_prefix_tokens == n
    assert (tokens - ref_tokens).abs().max() < 1e-4
    assert (cls - ref_tokens[:, 0]).abs().max() < 1e-4
    assert (gap - ref_tokens[:, n:].mean(1)).abs().max() < 1e-4
    return x, gap


def test_deit_distilled_with_arch(tmp_path, deit):
    path = tmp_path / "deit.pth"
    torch.save(deit.state_dict(), path)
    loaded = load_model(path, LoadOptions(arch="deit_tiny_distilled_patch16_224"))
    a = loaded.arch
    assert (a.family, a.image_size, a.patch_size, a.width, a.depth, a.heads, a.num_prefix_tokens, a.num_registers,
            a.num_classes, a.heads_source) == ("timm", 64, 16, 192, 12, 3, 2, 0, 10, "library config")
    x, _ = _check_against(loaded, deit, 64)
    with torch.no_grad():
        cls_logits = deit.head(deit.forward_features(x)[:, 0])
        assert (loaded.backbone.head(pool(loaded.backbone.tokens(x), 2, PoolingSpec("cls")).token)
                - cls_logits).abs().max() < 1e-4
    t = loaded.transform
    crop_pct = timm.models.get_pretrained_cfg("deit_tiny_distilled_patch16_224").crop_pct  # timm: floor(size / pct)
    assert (t.crop, t.resize, t.interpolation) == (64, int(64 / crop_pct), "bicubic")


def test_eva02_gap_and_head_are_the_models_own(tmp_path, eva):
    """EVA02 pools avg + fc_norm: gap is its own pooled feature and gap + head its own logits."""
    path = tmp_path / "eva.pth"
    torch.save({"state_dict": eva.state_dict(), "arch": "eva02_tiny_patch14_224", "epoch": 1}, path)
    loaded = load_model(path)  # fc_norm without norm: only a timm model holds it; the name comes from the file
    assert loaded.arch.family == "timm" and "checkpoint['arch']" in loaded.arch.config
    x, gap = _check_against(loaded, eva, 56)
    with torch.no_grad():
        assert (loaded.backbone.head(gap) - eva(x)).abs().max() < 1e-4
    assert loaded.backbone.details["timm_global_pool"] == "avg" and "fc_norm" in loaded.backbone.details["head"]


def test_pretrained_cfg_file_and_image_size(tmp_path):
    ref = reference("vit_tiny_patch16_224", 64, seed=2, num_classes=0)
    path = tmp_path / "vit.pth"
    torch.save({"state_dict": ref.state_dict(), "pretrained_cfg": {"architecture": "vit_tiny_patch16_224"}}, path)
    loaded = load_model(path)
    assert loaded.arch.name == "vit_tiny_patch16_224" and loaded.arch.num_classes is None
    _check_against(loaded, ref, 64)
    big = load_model(path, LoadOptions(image_size=96))
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=96).eval()
    other.load_state_dict(timm.models.vision_transformer.checkpoint_filter_fn(ref.state_dict(), other))
    assert big.arch.grid == (6, 6) and big.arch.native_image_size == 64
    _check_against(big, other, 96)


def test_missing_or_wrong_arch_names_the_fits(tmp_path, deit):
    path = tmp_path / "deit.pth"
    sd = deit.state_dict()
    torch.save(sd, path)
    # the shapes the messages must name, read from the file's own tensors (not from the loader)
    shapes = (f"patch_embed.proj.weight {tuple(sd['patch_embed.proj.weight'].shape)}, "
              f"pos_embed {tuple(sd['pos_embed'].shape)}, depth {len(deit.blocks)}")
    assert shapes == "patch_embed.proj.weight (192, 3, 16, 16), pos_embed (1, 18, 192), depth 12"
    with pytest.raises(InputError, match=r"patch_embed.proj.weight \(192, 3, 16, 16\).*depth 12.* pass --arch "
                                         r"NAME \(timm names that fit: deit_tiny_distilled_patch16_224\)") as e:
        load_model(path)
    assert "\n" not in str(e.value) and f"the tensors ({shapes})" in str(e.value)
    with pytest.raises(InputError, match=r"--arch 'deit_small_distilled_patch16_224' does not fit .*"
                                         r"deit_tiny_distilled_patch16_224") as e:
        load_model(path, LoadOptions(arch="deit_small_distilled_patch16_224"))
    small = timm.create_model("deit_small_distilled_patch16_224", pretrained=False).cls_token.shape
    msg = str(e.value)
    assert "\n" not in msg and f"does not fit the tensors ({shapes};" in msg
    # the first tensor that differs, with the file's shape and the one the named architecture expects
    assert (f"'cls_token' has shape {tuple(sd['cls_token'].shape)}" in msg and f"expects {tuple(small)}" in msg
            and tuple(small) == (1, 1, 384)), msg
    with pytest.raises(InputError, match=r"'resnet18' builds a timm ResNet, not a VisionTransformer"):
        load_model(path, LoadOptions(arch="resnet18"))
    with pytest.raises(InputError, match=r"'vit_nonesuch' is not a timm model; timm names that fit"):
        load_model(path, LoadOptions(arch="vit_nonesuch"))
    with pytest.raises(InputError, match=r"--num-heads 4 contradicts timm's config") as e:
        load_model(path, LoadOptions(arch="deit_tiny_distilled_patch16_224", num_heads=4))
    assert "3 heads of width 64" in str(e.value) and shapes in str(e.value), str(e.value)
    with pytest.raises(InputError, match=r"--arch .* does not apply to --family dino"):
        load_model(path, LoadOptions(arch="deit_tiny_distilled_patch16_224", family="dino"))


def test_dinov2_layout_with_arch(tmp_path):
    """--arch with facebookresearch/dinov2's own layout: the dinov2 key mapping is applied first."""
    from test_models_dinov2 import reference as dinov2_ref
    from test_models_dinov2 import to_dinov2_layout

    ref = dinov2_ref("vit_small_patch14_reg4_dinov2", seed=5)
    path = tmp_path / "reg.pth"
    torch.save(to_dinov2_layout(ref.state_dict(), chunks=2), path)
    with pytest.raises(InputError, match=r"does not fit .*depth 2"):  # the real name has 12 blocks, the file 2
        load_model(path, LoadOptions(arch="vit_small_patch14_reg4_dinov2"))


HUB_NAME = "vit_wee_patch16_reg1_gap_256.sbb_in1k"  # one register, no class token, avg pooling with fc_norm


def test_timm_hub_name_with_registers_and_image_size(tmp_path, monkeypatch):
    """A timm: name served from a local HF cache (offline): registers counted, cls refused, --image-size resamples."""
    from safetensors.torch import save_file

    for var in ("TORCH_HOME", "HF_HOME", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = reference(HUB_NAME.split(".")[0], 256, seed=3, num_classes=1000)
    repo = tmp_path / "home" / "hub" / f"models--timm--{HUB_NAME}"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(repo / "snapshots" / "abc" /
                                                                           "model.safetensors"))
    loaded = load_model(f"timm:{HUB_NAME}", LoadOptions(image_size=128))
    a = loaded.arch
    assert (a.num_registers, a.num_prefix_tokens, a.image_size, a.native_image_size, a.grid) == (1, 1, 128, 256, (8, 8))
    assert loaded.transform.crop == 128 and loaded.transform.resize == int(128 / 0.95)
    other = timm.create_model(HUB_NAME.split(".")[0], pretrained=False, img_size=128).eval()
    other.load_state_dict(timm.models.vision_transformer.checkpoint_filter_fn(ref.state_dict(), other))
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        tokens = loaded.backbone.tokens(x)
        assert (tokens - other.forward_features(x)).abs().max() < 1e-4
        gap = pool(tokens, loaded.backbone.num_prefix_tokens, PoolingSpec("gap")).token
        assert (loaded.backbone.head(gap) - other(x)).abs().max() < 1e-4  # the model's own avg + fc_norm + head
    from lastvit_eval.plan import _check_poolings

    with pytest.raises(InputError, match="has no class token"):
        _check_poolings([PoolingSpec("cls")], loaded, None)
    with pytest.raises(InputError, match="--arch does not apply to hub names"):
        load_model(f"timm:{HUB_NAME}", LoadOptions(arch="vit_tiny_patch16_224"))


def test_nan_weights_are_not_blamed_on_the_name(tmp_path, deit):
    sd = {k: v.clone() for k, v in deit.state_dict().items()}
    sd["blocks.3.attn.proj.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    with pytest.raises(InputError, match=r"'blocks.3.attn.proj.weight' .* non-finite values") as e:
        load_model(path, LoadOptions(arch="deit_tiny_distilled_patch16_224"))
    assert "does not fit" not in str(e.value)
    with pytest.raises(InputError, match=r"--image-size 60 is not a positive multiple of the patch size 16"):
        load_model(path, LoadOptions(arch="deit_tiny_distilled_patch16_224", image_size=60))


def test_arch_through_the_cli(tmp_path, deit):
    import json

    from typer.testing import CliRunner

    from lastvit_eval.app import app

    path = tmp_path / "deit.pth"
    torch.save(deit.state_dict(), path)
    r = CliRunner().invoke(app, ["inspect", str(path)])
    assert r.exit_code == 2 and "pass --arch NAME (timm names that fit: deit_tiny_distilled_patch16_224)" in " ".join(
        r.output.split())
    r = CliRunner().invoke(app, ["inspect", str(path), "--arch", "deit_tiny_distilled_patch16_224", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["family"] == "timm" and info["arch"]["num_prefix_tokens"] == 2 and info["details"]["head"] == "head"


# --- MAE (facebookresearch/mae) ----------------------------------------------------------------------------------

def mae_sincos(embed_dim: int, grid_size: int) -> torch.Tensor:
    """MAE's util/pos_embed.py get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=True), transcribed."""
    import numpy as np

    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.
        omega = 1. / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return torch.from_numpy(emb).float().unsqueeze(0)


def mae_encoder(seed: int, fine_tuned: bool = False) -> torch.nn.Module:
    """MAE's encoder is timm's ViT: fixed sin-cos pos_embed (pre-training); fine-tuned: global_pool avg + fc_norm."""
    kw = dict(global_pool="avg", num_classes=10) if fine_tuned else dict(num_classes=0)
    m = reference("vit_tiny_patch16_224", 64, seed, words=("norm", "head", "token"), **kw)
    with torch.no_grad():
        m.pos_embed.copy_(mae_sincos(192, 4))
        if fine_tuned:
            m.pos_embed.add_(torch.randn_like(m.pos_embed) * 0.02)  # trained on in fine-tuning
    return m.eval()


def mae_decoder(seed: int, dim: int = 32) -> dict:
    """The keys MaskedAutoencoderViT adds to the encoder: mask_token and the decoder_* modules."""
    from timm.models.vision_transformer import Block

    torch.manual_seed(seed)
    block = Block(dim, 2, qkv_bias=True)
    sd = {"mask_token": torch.randn(1, 1, dim), "decoder_embed.weight": torch.randn(dim, 192),
          "decoder_embed.bias": torch.randn(dim), "decoder_pos_embed": mae_sincos(dim, 4),
          "decoder_norm.weight": torch.ones(dim), "decoder_norm.bias": torch.zeros(dim),
          "decoder_pred.weight": torch.randn(16 * 16 * 3, dim), "decoder_pred.bias": torch.randn(16 * 16 * 3)}
    sd.update({f"decoder_blocks.0.{k}": v for k, v in block.state_dict().items()})
    return sd


def test_mae_pretrain_checkpoint_is_timm_with_the_decoder_dropped(tmp_path):
    """{'model': encoder + mask_token + decoder_*}: not DINOv2 (mask_token) nor DINO; decoder keys listed as
    dropped; tokens, CLS and GAP are timm's own; MAE's evaluation transform."""
    ref = mae_encoder(seed=11)
    decoder = mae_decoder(seed=12)
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": {**ref.state_dict(), **decoder}}, path)
    with pytest.raises(InputError, match=r"an MAE pretrain checkpoint .* pass --arch NAME \(timm names that fit: "
                                         r".*vit_tiny_patch16_224") as e:
        load_model(path)
    assert "\n" not in str(e.value)
    loaded = load_model(path, LoadOptions(arch="vit_tiny_patch16_224"))
    assert loaded.arch.family == "timm" and loaded.keys.format == "MAE pretrain checkpoint {'model': ...}"
    assert sorted(loaded.keys.dropped) == sorted(decoder)
    assert loaded.arch.num_classes is None and loaded.arch.num_prefix_tokens == 1
    _check_against(loaded, ref, 64)
    t = loaded.transform
    assert (t.resize, t.crop, t.interpolation, t.mean) == (64 * 256 // 224, 64, "bicubic", (0.485, 0.456, 0.406))
    from lastvit_eval.report.reference import supervision

    assert supervision(loaded.provenance()) == "mae"  # self-supervised: not the label-supervised row


def test_mae_released_encoder_is_not_dino(tmp_path):
    """MAE's released encoder ({'model': encoder}) has DINO's key names; its sin-cos table routes it to timm."""
    ref = mae_encoder(seed=13)
    torch.save({"model": ref.state_dict()}, tmp_path / "mae_pretrain_vit_tiny.pth")
    with pytest.raises(InputError, match=r"an MAE encoder checkpoint .* pass --arch NAME"):
        load_model(tmp_path / "mae_pretrain_vit_tiny.pth")
    loaded = load_model(tmp_path / "mae_pretrain_vit_tiny.pth", LoadOptions(arch="vit_tiny_patch16_224"))
    assert loaded.arch.family == "timm" and loaded.keys.dropped == []
    from lastvit_eval.report.reference import supervision

    assert supervision(loaded.provenance()) == "mae"
    _check_against(loaded, ref, 64)
    # a learned pos_embed (DINO) stays with the DINO adapter
    dino = mae_encoder(seed=14)
    with torch.no_grad():
        dino.pos_embed.add_(torch.randn_like(dino.pos_embed) * 0.02)
    torch.save(dino.state_dict(), tmp_path / "dino.pth")
    assert load_model(tmp_path / "dino.pth").arch.family == "dino"


def test_mae_fine_tuned_avg_pool_and_fc_norm(tmp_path):
    """MAE fine-tuned (global_pool avg: fc_norm, no norm): gap is timm's pooled feature and gap + head its logits."""
    ref = mae_encoder(seed=15, fine_tuned=True)
    torch.save({"model": ref.state_dict()}, tmp_path / "checkpoint-99.pth")
    loaded = load_model(tmp_path / "checkpoint-99.pth", LoadOptions(arch="vit_tiny_patch16_224"))
    assert any("global_pool='avg'" in s for s in loaded.keys.steps)
    x, gap = _check_against(loaded, ref, 64)
    with torch.no_grad():
        assert (ref.fc_norm(gap) - ref.forward_head(ref.forward_features(x), pre_logits=True)).abs().max() < 1e-4
        assert (loaded.backbone.head(gap) - ref(x)).abs().max() < 1e-4
    from lastvit_eval.report.reference import supervision

    assert supervision(loaded.provenance()) == "label"  # fine-tuned on labels: the label-supervised row


# --- attention-pool head (global_pool='map') ---------------------------------------------------------------------

def test_map_head_is_timms_own_attention_pool(tmp_path):
    """A timm ViT with `attn_pool` (class token kept out of it, as timm's pool does): `map` is forward_head's
    pre-logits and head(map) the model's own logits; a model without one has no map head."""
    from lastvit_eval.engine.taps import TapRequest, forward_taps
    from lastvit_eval.plan import _check_poolings

    ref = reference("vit_tiny_patch16_224", 64, 16, words=("norm", "head", "token", "attn_pool"), global_pool="map")
    path = tmp_path / "map.pth"
    torch.save({"state_dict": ref.state_dict(), "arch": "vit_tiny_patch16_224"}, path)
    loaded = load_model(path)
    assert loaded.has_map_head and any("global_pool='map'" in s for s in loaded.keys.steps)
    x, _ = _check_against(loaded, ref, 64)
    req = TapRequest((PoolingSpec("map"),), frozenset({"pooled", "logits", "patch_scores"}))
    with torch.no_grad():
        out = forward_taps(loaded, x, req, "fp32")
        want = ref.forward_head(ref.forward_features(x), pre_logits=True)
        assert (out["pooled/map"] - want).abs().max() < 1e-4
        assert (loaded.backbone.head(out["pooled/map"]) - ref(x)).abs().max() < 1e-4
        # the class token does not enter timm's attention pool: pooling every token would differ
        assert (ref.attn_pool(ref.forward_features(x)) - want).abs().max() > 1e-3
    _check_poolings([PoolingSpec("map")], loaded, None)
    plain = tmp_path / "plain.pth"
    torch.save({"state_dict": timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                                                img_size=64).state_dict(), "arch": "vit_tiny_patch16_224"}, plain)
    other = load_model(plain)
    assert not other.has_map_head and other.backbone.map_pool(torch.zeros(1, 17, 192)) is None
    with pytest.raises(InputError, match="has no attention-pool head"):
        _check_poolings([PoolingSpec("map")], other, None)


def test_mae_training_checkpoint_names_its_model_in_args(tmp_path):
    """MAE's main_pretrain saves {'model', 'args', ...} with args.model = 'mae_vit_<size>_patch<p>': with
    --trust-checkpoint (args is a pickled Namespace) the timm name is read from it, no --arch needed."""
    import argparse

    from lastvit_eval.models.timm_vit import mae_to_timm

    # MAE's published names (models_mae.py, models_vit.py) map onto names timm builds
    for mae_name, timm_name in (("mae_vit_base_patch16", "vit_base_patch16_224"),
                                ("mae_vit_large_patch16", "vit_large_patch16_224"),
                                ("mae_vit_huge_patch14", "vit_huge_patch14_224"),
                                ("vit_base_patch16", "vit_base_patch16_224")):
        assert mae_to_timm(mae_name) == timm_name and timm_name in timm.list_models(timm_name)
    assert mae_to_timm("vit_base_patch16_224") is None and mae_to_timm("deit_small_patch16_224") is None
    ref = mae_encoder(seed=17)
    path = tmp_path / "checkpoint-399.pth"
    torch.save({"model": {**ref.state_dict(), **mae_decoder(seed=18)}, "epoch": 399,
                "args": argparse.Namespace(model="mae_vit_tiny_patch16", mask_ratio=0.75)}, path)
    with pytest.raises(InputError, match="trust-checkpoint"):
        load_model(path)
    loaded = load_model(path, LoadOptions(trust=True))
    assert loaded.arch.name == "vit_tiny_patch16_224" and "MAE's name for timm's" in loaded.arch.config
    _check_against(loaded, ref, 64)
