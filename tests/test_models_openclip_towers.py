"""OpenCLIP towers beyond ViT-B: ResNet CLIP (attnpool as `map`), SigLIP (no class token, MAP head), EVA-CLIP
and ViT-L/14, each built at random init with open_clip, saved as open_clip saves it, compared with its forward."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP
from open_clip.push_to_hf_hub import save_config_for_hf
from open_clip.tokenizer import SimpleTokenizer
from safetensors.torch import save_file
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from typer.testing import CliRunner

from lastvit_eval.app import app
from lastvit_eval.engine.taps import TapRequest, forward_taps
from lastvit_eval.errors import InputError
from lastvit_eval.models import LoadOptions, lazy, load_model
from lastvit_eval.models.clip_text import Prompts, build_classifier
from lastvit_eval.pooling import PoolingSpec

runner = CliRunner()
TEXT = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}  # heads = width // 64


@register_model
def lastvit_test_siglip_tiny(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """SigLIP's trunk layout (no class token, MAP head) at test size; open_clip builds it by name like the real one."""
    kwargs.setdefault("global_pool", "map")
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, class_token=False,
                             **{k: v for k, v in kwargs.items() if k in ("num_classes", "global_pool")})


SIGLIP_CFG = {"embed_dim": 64, "init_logit_bias": -10, "custom_text": True,
              "vision_cfg": {"image_size": 32, "timm_model_name": "lastvit_test_siglip_tiny",
                             "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
              "text_cfg": {**TEXT, "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                           "norm_kwargs": {"eps": 1e-6}, "hf_tokenizer_name": "timm/ViT-B-16-SigLIP"}}
EVA_CFG = {"embed_dim": 32, "custom_text": True,
           "vision_cfg": {"image_size": 224, "timm_model_name": "eva02_tiny_patch14_224",
                          "timm_model_pretrained": False, "timm_pool": "token", "timm_proj": None},
           "text_cfg": TEXT}


def _perturb(m: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random init leaves norms at identity and BatchNorm statistics at 0/1: perturb so a wrong mapping shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, t in m.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand_like(t) + 0.5)
            elif any(w in name for w in ("bn", "norm", "ln_", "proj", "attn_pool", "head")):
                t.add_(torch.randn_like(t) * 0.1)
    return m.eval()


def tiny_rn_clip(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    m = CLIP(32, vision_cfg=CLIPVisionCfg(layers=[1, 2, 1, 1], width=16, head_width=64, image_size=64),
             text_cfg=CLIPTextCfg(**TEXT), quick_gelu=True)
    return _perturb(m, seed)


def _save_hf(model, cfg: dict, folder, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> None:
    """open_clip's HF layout: open_clip_model.safetensors + open_clip_config.json (its own writer); the
    preprocessing attributes are those open_clip.create_model sets (SigLIP's mean/std by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.visual.image_mean, model.visual.image_std = mean, std
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    save_config_for_hf(model, folder / "open_clip_config.json", cfg)


def _taps(loaded, x, *poolings):
    req = TapRequest(tuple(PoolingSpec(p) for p in poolings), frozenset({"pooled", "embedding", "patch_scores"}))
    with torch.no_grad():
        return forward_taps(loaded, x, req, "fp32")


def _reference_and_ours(ref, norm, loaded, x):
    """(ref.encode_image(x), the output of `norm` (the library's final norm) during it, our backbone's tokens)."""
    seen = {}
    h = norm.register_forward_hook(lambda m, i, o: seen.setdefault("tokens", o))
    try:
        with torch.no_grad():
            emb = ref.encode_image(x)
            tokens = loaded.backbone.tokens(x)
    finally:
        h.remove()
    return emb, seen["tokens"], tokens


# --- ResNet CLIP ---------------------------------------------------------------------------------------------

@pytest.fixture
def rn_clip_file(tmp_path):
    ref = tiny_rn_clip(seed=1)
    path = tmp_path / "RN50.pt"  # an OpenAI-style state dict: its markers mean QuickGELU
    torch.save({**ref.state_dict(), "input_resolution": torch.tensor(64), "context_length": torch.tensor(16),
                "vocab_size": torch.tensor(49408)}, path)
    return ref, path


def test_resnet_clip_tokens_map_gap_match_open_clip(rn_clip_file):
    ref, path = rn_clip_file
    loaded = load_model(path)
    a = loaded.arch
    assert (a.family, a.patch_size, a.grid, a.width, a.num_prefix_tokens, a.embed_dim, a.heads) == (
        "openclip", 32, (2, 2), 512, 0, 32, 8)
    assert loaded.backbone.details["quick_gelu"] is True and loaded.backbone.has_map_head
    # a lazy model planned from the stored record knows the attention pool without building the module
    unbuilt = lazy.lazy_model(json.loads(json.dumps(lazy.to_record(loaded))), LoadOptions(), lambda: loaded)
    assert unbuilt.has_map_head is True and not unbuilt.materialized
    x = torch.randn(2, 3, 64, 64)
    seen = {}
    h = ref.visual.layer4.register_forward_hook(lambda m, i, o: seen.setdefault("map", o))
    with torch.no_grad():
        emb = ref.encode_image(x)
    h.remove()
    out = _taps(loaded, x, "map", "gap")
    with torch.no_grad():
        tokens = loaded.backbone.tokens(x)
    assert (tokens - seen["map"].flatten(2).transpose(1, 2)).abs().max() < 1e-4
    assert (out["pooled/map"] - emb).abs().max() < 1e-4  # attnpool = encode_image before normalization
    assert (out["embedding/map"] - emb).abs().max() < 1e-4
    assert (out["pooled/gap"] - F.adaptive_avg_pool2d(seen["map"], 1).flatten(1)).abs().max() < 1e-4
    # map's patch scores: each patch's value embedding c_proj(v_proj(x_i + pos_i)) against the pooled embedding,
    # written out from the attnpool's own weights
    ap = ref.visual.attnpool
    with torch.no_grad():
        v = (seen["map"].flatten(2).transpose(1, 2) + ap.positional_embedding[1:]) @ ap.v_proj.weight.T + ap.v_proj.bias
        e = v @ ap.c_proj.weight.T + ap.c_proj.bias
        want = F.cosine_similarity(e, emb.unsqueeze(1), dim=-1)
        assert (out["patch_scores/map"] - want).abs().max() < 1e-4
        # gap's embedding is the mean of those value embeddings (the attnpool's value path is affine)
        assert (out["embedding/gap"] - e.mean(dim=1)).abs().max() < 1e-4


def test_resnet_clip_zero_shot_logits_match_open_clip(rn_clip_file):
    ref, path = rn_clip_file
    loaded = load_model(path)
    names = ("cat", "dog", "red car")
    w = build_classifier(loaded, Prompts(names, ("a photo of a {c}.",), "test"))
    x = torch.randn(3, 3, 64, 64)
    emb = _taps(loaded, x, "map")["embedding/map"]
    ours = F.normalize(emb, dim=-1) @ torch.from_numpy(w)
    tok = SimpleTokenizer(context_length=16)([f"a photo of a {c}." for c in names])
    with torch.no_grad():
        want = F.normalize(ref.encode_image(x), dim=-1) @ F.normalize(ref.encode_text(tok), dim=-1).T
    assert (ours - want).abs().max() < 1e-4


def test_resnet_clip_training_checkpoint_and_wrong_shapes(tmp_path):
    ref = tiny_rn_clip(seed=2)
    sd = {"module." + k: v for k, v in ref.state_dict().items()}
    torch.save({"epoch": 3, "name": "2024_01_01-model_RN50-lr_0.0005", "state_dict": sd}, tmp_path / "epoch_3.pt")
    loaded = load_model(tmp_path / "epoch_3.pt", LoadOptions(quick_gelu=True))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (_taps(loaded, x, "map")["pooled/map"] - ref.encode_image(x)).abs().max() < 1e-4
    sd["module.visual.layer2.1.conv2.weight"] = torch.zeros(32, 16, 3, 3)
    torch.save({"epoch": 3, "name": "x", "state_dict": sd}, tmp_path / "bad.pt")
    with pytest.raises(InputError, match=r"visual\.layer2\.1\.conv2\.weight.*\(32, 16, 3, 3\).*\(32, 32, 3, 3\)"):
        load_model(tmp_path / "bad.pt")


# --- SigLIP, EVA-CLIP (timm trunks) --------------------------------------------------------------------------

def test_siglip_map_head_and_gap_match_open_clip(tmp_path):
    torch.manual_seed(3)
    ref = _perturb(CustomTextCLIP(**{k: v for k, v in SIGLIP_CFG.items() if k != "custom_text"}), 3)
    _save_hf(ref, SIGLIP_CFG, tmp_path / "siglip")
    loaded = load_model(tmp_path / "siglip" / "open_clip_model.safetensors")
    a = loaded.arch
    assert (a.num_prefix_tokens, a.grid, a.width, a.heads, a.embed_dim) == (0, (4, 4), 64, 2, 64)
    assert loaded.backbone.has_map_head and "open_clip_config.json" in loaded.arch.config
    assert loaded.transform.mean == (0.5, 0.5, 0.5) and loaded.transform.crop == 32
    x = torch.randn(2, 3, 32, 32)
    seen = {}
    trunk = ref.visual.trunk
    h1 = trunk.norm.register_forward_hook(lambda m, i, o: seen.setdefault("tokens", o))
    h2 = trunk.attn_pool.register_forward_hook(lambda m, i, o: seen.setdefault("map", o))
    with torch.no_grad():
        emb = ref.encode_image(x)
    h1.remove()
    h2.remove()
    out = _taps(loaded, x, "map", "gap")
    assert (out["pooled/map"] - seen["map"]).abs().max() < 1e-4
    assert (out["embedding/map"] - emb).abs().max() < 1e-4
    assert (out["pooled/gap"] - seen["tokens"].mean(dim=1)).abs().max() < 1e-4
    with torch.no_grad():  # patch tokens: every token is a patch (no prefix), the trunk's final norm output
        tokens = loaded.backbone.tokens(x)
    assert tokens.shape == (2, 16, 64) and (tokens - seen["tokens"]).abs().max() < 1e-4
    with pytest.raises(InputError, match="needs the 'timm/ViT-B-16-SigLIP' tokenizer"):
        from lastvit_eval.plan import _text_plan

        _text_plan(type("P", (), {"model": loaded, "request": type("R", (), {"checkpoint": "s"})()})())


@pytest.mark.parametrize("pooling", ["cls"])
def test_cli_refuses_cls_on_siglip_before_any_forward(tmp_path, imagenet_root, forwarded, pooling):
    ref = CustomTextCLIP(**{k: v for k, v in SIGLIP_CFG.items() if k != "custom_text"})
    _save_hf(ref, SIGLIP_CFG, tmp_path / "siglip")
    r = runner.invoke(app, ["run", "-e", "patch-hit", "-p", pooling, "-c",
                            str(tmp_path / "siglip" / "open_clip_model.safetensors"), "-r", str(imagenet_root),
                            "-o", str(tmp_path / "o"), "--workers", "0", "--no-progress"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "no class token" in lines[0] and "-p map" in lines[0], r.output
    assert forwarded == []


def test_eva_clip_class_token_matches_open_clip_and_has_no_map(tmp_path):
    torch.manual_seed(4)
    ref = _perturb(CustomTextCLIP(**{k: v for k, v in EVA_CFG.items() if k != "custom_text"}), 4)
    _save_hf(ref, EVA_CFG, tmp_path / "eva")
    loaded = load_model(tmp_path / "eva" / "open_clip_model.safetensors")
    a = loaded.arch
    assert (a.name, a.patch_size, a.grid, a.num_prefix_tokens, a.width) == ("eva02_tiny_patch14_224", 14, (16, 16),
                                                                            1, 192)
    assert not loaded.backbone.has_map_head
    x = torch.randn(1, 3, 224, 224)
    emb, ref_tokens, tokens = _reference_and_ours(ref, ref.visual.trunk.norm, loaded, x)
    out = _taps(loaded, x, "cls", "gap")
    assert (out["embedding/cls"] - emb).abs().max() < 1e-4
    # patch tokens and GAP: EVA's own final norm output during encode_image, class token skipped
    assert tokens.shape == (1, 1 + 256, 192) and (tokens - ref_tokens).abs().max() < 1e-4
    assert (out["pooled/gap"] - ref_tokens[:, 1:].mean(dim=1)).abs().max() < 1e-4


def test_timm_tower_without_config_is_one_clear_error(tmp_path):
    ref = CustomTextCLIP(**{k: v for k, v in SIGLIP_CFG.items() if k != "custom_text"})
    torch.save(ref.state_dict(), tmp_path / "siglip.bin")
    with pytest.raises(InputError, match=r"siglip\.bin: an open_clip timm-trunk tower .* open_clip_config\.json"):
        load_model(tmp_path / "siglip.bin")
    # a config for another trunk: the strict load names the first tensor whose shape disagrees
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        **SIGLIP_CFG, "vision_cfg": {**SIGLIP_CFG["vision_cfg"], "timm_model_name": "vit_tiny_patch16_224"}}}))
    with pytest.raises(InputError, match=r"tensor 'visual\.trunk\..*' has shape .* expects|missing keys"):
        load_model(tmp_path / "siglip.bin")


# --- ViT-L/14 --------------------------------------------------------------------------------------------------

def test_vit_l_14_inferred_from_tensors(tmp_path):
    """ViT-L/14's width 1024, 16 heads (from the run name's open_clip config) and patch 14; two blocks for speed."""
    torch.manual_seed(5)
    ref = CLIP(48, vision_cfg=CLIPVisionCfg(layers=2, width=1024, head_width=64, mlp_ratio=0.25, patch_size=14,
                                            image_size=28), text_cfg=CLIPTextCfg(**TEXT))
    ref = _perturb(ref, 5)
    torch.save({"epoch": 1, "name": "2024_01_01-model_ViT-L-14-lr_0.001-b_128",
                "state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, tmp_path / "epoch_1.pt")
    loaded = load_model(tmp_path / "epoch_1.pt")
    a = loaded.arch
    assert (a.name, a.width, a.depth, a.heads, a.heads_source, a.patch_size, a.grid) == (
        "ViT-L-14", 1024, 2, 16, "checkpoint config", 14, (2, 2))
    x = torch.randn(2, 3, 28, 28)
    emb, ref_tokens, tokens = _reference_and_ours(ref, ref.visual.ln_post, loaded, x)
    out = _taps(loaded, x, "cls", "gap")
    assert (out["embedding/cls"] - emb).abs().max() < 1e-4
    # patch tokens and GAP: open_clip's ln_post output in its own forward, class token skipped
    assert tokens.shape == (2, 1 + 4, 1024) and (tokens - ref_tokens).abs().max() < 1e-4
    assert (out["pooled/gap"] - ref_tokens[:, 1:].mean(dim=1)).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["openclip:RN50/openai", "openclip:ViT-L-14/openai",
                                  "openclip:ViT-B-16-SigLIP/webli", "openclip:EVA02-B-16/merged2b_s8b_b131k"])
def test_hub_names_offline_uncached(tmp_path, monkeypatch, name):
    for var in ("TORCH_HOME", "HF_HOME", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="offline") as e:
        load_model(name)
    assert name in str(e.value) and "\n" not in str(e.value)


# --- through the CLI ---------------------------------------------------------------------------------------------

def test_cli_zero_shot_and_patch_hit_with_map_on_resnet_clip(rn_clip_file, imagenet_root, tmp_path):
    """One run: zero-shot and PiB on the attnpool; the zero-shot rows are open_clip's own cosine argmax."""
    import pandas as pd

    from lastvit_eval.engine.dataset import load_rgb

    ref, path = rn_clip_file
    names = tmp_path / "names.txt"
    names.write_text("tench\ngoldfish\ngreat white shark\ntiger shark\n")
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {c}.\n")
    out = tmp_path / "run"
    r = runner.invoke(app, ["run", "-e", "zero-shot,patch-hit", "-p", "map", "-c", str(path), "-r", str(imagenet_root),
                            "--classnames", str(names), "--templates", str(templates), "-o", str(out),
                            "--workers", "0", "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "map" / "metrics.json").read_text())
    assert rec["info"]["patch-hit"]["evaluated"] == 5 and rec["provenance"]["pooling"]["kind"] == "map"
    rows = pd.read_csv(out / "map" / "zero_shot_rows.csv")
    tok = SimpleTokenizer(context_length=16)([f"a photo of a {c}." for c in names.read_text().split("\n")[:4]])
    loaded = load_model(path)
    with torch.no_grad():
        text = F.normalize(ref.encode_text(tok), dim=-1)
        for _, row in rows.iterrows():
            img = next((imagenet_root / "val").rglob(f"{row['image_id']}.JPEG"))
            x = loaded.transform.normalize(loaded.transform.pixels(load_rgb(img))[None])
            assert int((F.normalize(ref.encode_image(x), dim=-1) @ text.T).argmax()) == row["pred"]


def test_cli_extract_defaults_follow_the_model(rn_clip_file, imagenet_root, tmp_path):
    from lastvit_eval.features_io import load_features

    _, path = rn_clip_file
    out = tmp_path / "f.npz"
    r = runner.invoke(app, ["extract", "-c", str(path), "-r", str(imagenet_root), "--output", str(out), "--workers",
                            "0", "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert {k.split("/", 1)[1] for k in load_features(out).arrays if "/" in k} == {"gap", "last-k1", "map"}


# --- --image-size on the towers ----------------------------------------------------------------------------------

def test_resnet_clip_refuses_image_size_before_any_forward(rn_clip_file, imagenet_root, tmp_path, forwarded):
    """open_clip's attnpool has fixed position embeddings and no resampling: another size is refused, one line."""
    _, path = rn_clip_file
    assert load_model(path, LoadOptions(image_size=64)).arch.image_size == 64  # the native size is no change
    with pytest.raises(InputError, match=r"RN50.pt: --image-size 96 does not apply to a CLIP ResNet .*64 px only"):
        load_model(path, LoadOptions(image_size=96))
    r = runner.invoke(app, ["run", "-e", "patch-hit", "-p", "map", "-c", str(path), "--image-size", "96", "-r",
                            str(imagenet_root), "-o", str(tmp_path / "o"), "--workers", "0", "--no-progress"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "--image-size 96" in lines[0], r.output
    assert forwarded == []


def _trunk_at(trunk, size: int, **kw):
    """The reference: timm's model built at `size`, loaded through timm's own checkpoint filter (pos_embed resampled
    by timm's resample_abs_pos_embed, EVA's rope built for the new grid)."""
    import timm

    if isinstance(trunk, VisionTransformer):
        from timm.models.vision_transformer import checkpoint_filter_fn

        big = VisionTransformer(img_size=size, **kw).eval()
    else:
        from timm.models.eva import checkpoint_filter_fn

        big = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=trunk.num_classes,
                                global_pool=trunk.global_pool, img_size=size).eval()
    big.load_state_dict(checkpoint_filter_fn(trunk.state_dict(), big))
    return big


def test_siglip_image_size_matches_timm_at_that_size(tmp_path):
    torch.manual_seed(6)
    ref = _perturb(CustomTextCLIP(**{k: v for k, v in SIGLIP_CFG.items() if k != "custom_text"}), 6)
    _save_hf(ref, SIGLIP_CFG, tmp_path / "siglip")
    loaded = load_model(tmp_path / "siglip" / "open_clip_model.safetensors", LoadOptions(image_size=48))
    a, t = loaded.arch, loaded.transform
    assert (a.image_size, a.grid, a.native_image_size, t.crop, t.resize) == (48, (6, 6), 32, 48, 48)
    big = _trunk_at(ref.visual.trunk, 48, patch_size=8, embed_dim=64, depth=2, num_heads=2, class_token=False,
                    global_pool="map", num_classes=0)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        want = big.forward_features(x)
        tokens = loaded.backbone.tokens(x)
        ref.visual.trunk = big
        emb = ref.encode_image(x)
    assert tokens.shape == (2, 36, 64) and (tokens - want).abs().max() < 1e-4
    out = _taps(loaded, x, "map", "gap")
    assert (out["pooled/gap"] - want.mean(dim=1)).abs().max() < 1e-4
    assert (out["embedding/map"] - emb).abs().max() < 1e-4
    with pytest.raises(InputError, match=r"--image-size 50 is not a positive multiple of the patch size 8"):
        load_model(tmp_path / "siglip" / "open_clip_model.safetensors", LoadOptions(image_size=50))


def test_eva_clip_image_size_matches_timm_at_that_size(tmp_path):
    """EVA's rotary embeddings follow the new grid (timm set_input_size), checked against EVA built at 112 px."""
    torch.manual_seed(7)
    ref = _perturb(CustomTextCLIP(**{k: v for k, v in EVA_CFG.items() if k != "custom_text"}), 7)
    _save_hf(ref, EVA_CFG, tmp_path / "eva")
    loaded = load_model(tmp_path / "eva" / "open_clip_model.safetensors", LoadOptions(image_size=112))
    assert (loaded.arch.image_size, loaded.arch.grid, loaded.arch.native_image_size) == (112, (8, 8), 224)
    big = _trunk_at(ref.visual.trunk, 112)
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        want = big.forward_features(x)
        ref.visual.trunk = big
        emb = ref.encode_image(x)
        tokens = loaded.backbone.tokens(x)
    assert (tokens - want).abs().max() < 1e-4
    out = _taps(loaded, x, "cls", "gap")
    assert (out["embedding/cls"] - emb).abs().max() < 1e-4
    assert (out["pooled/gap"] - want[:, 1:].mean(dim=1)).abs().max() < 1e-4
