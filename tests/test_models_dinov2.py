"""DINOv2 (with and without registers) in facebookresearch/dinov2's key layout, against timm's own DINOv2 models."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn
from typer.testing import CliRunner

from lastvit_eval.app import app
from lastvit_eval.errors import InputError
from lastvit_eval.models import LoadOptions, load_model
from lastvit_eval.pooling import PoolingSpec, pool

NATIVE = 56  # 4x4 grid at patch 14: small enough to stay fast


def reference(name: str, seed: int = 0, img_size: int = NATIVE) -> torch.nn.Module:
    """timm's DINOv2 model at random init (2 blocks), LayerScale and norms perturbed so the blocks matter."""
    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False, img_size=img_size, depth=2)
    with torch.no_grad():
        for k, p in m.named_parameters():
            if any(w in k for w in ("gamma", "norm", "reg_token", "cls_token", "pos_embed")):
                p.add_(torch.randn_like(p) * 0.5)
    return m.eval()


def to_dinov2_layout(timm_sd: dict, chunks: int = 0, seed: int = 1) -> dict:
    """The inverse of the loader's mapping, written out: what facebookresearch/dinov2 saves for this model.

    DINOv2 keeps a position embedding for CLS inside `pos_embed` and adds it to `cls_token` in the forward;
    timm's register models fold it into `cls_token` instead (no_embed_class). Any split gives the same forward,
    so a random CLS position is drawn here. Block chunks: `blocks.<chunk>.<global index>.*`.
    """
    sd = dict(timm_sd)
    dim = sd["cls_token"].shape[-1]
    if "reg_token" in sd:
        pos0 = torch.Generator().manual_seed(seed)
        cls_pos = torch.randn(1, 1, dim, generator=pos0)
        sd["register_tokens"] = sd.pop("reg_token")
        sd["cls_token"] = sd["cls_token"] - cls_pos
        sd["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)
    sd["mask_token"] = torch.zeros(1, dim)
    if chunks:
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        per = -(-depth // chunks)
        sd = {(f"blocks.{int(k.split('.')[1]) // per}.{k.split('.', 1)[1]}" if k.startswith("blocks.") else k): v
              for k, v in sd.items()}
    return sd


def _features(backbone, x):
    with torch.no_grad():
        t = backbone.tokens(x)
        n = backbone.num_prefix_tokens
        return t, pool(t, n, PoolingSpec("cls")).token, pool(t, n, PoolingSpec("gap")).token


@pytest.mark.parametrize("name,regs", [("vit_small_patch14_dinov2", 0), ("vit_small_patch14_reg4_dinov2", 4)])
@pytest.mark.parametrize("chunks", [0, 2])
def test_dinov2_file_matches_timm_reference(tmp_path, name, regs, chunks):
    ref = reference(name)
    path = tmp_path / "dinov2_pretrain.pth"
    torch.save(to_dinov2_layout(ref.state_dict(), chunks), path)
    loaded = load_model(path, LoadOptions(image_size=NATIVE))
    a = loaded.arch
    assert (a.family, a.patch_size, a.width, a.depth, a.heads, a.num_registers, a.num_prefix_tokens) == (
        "dinov2", 14, 384, 2, 6, regs, 1 + regs)
    assert a.heads_source == "library config" and "vit_small" in a.config and a.native_image_size is None
    assert loaded.keys.dropped == ["mask_token"] and loaded.keys.missing == loaded.keys.unexpected == []
    assert any("chunk" in s for s in loaded.keys.steps) == bool(chunks)
    x = torch.randn(2, 3, NATIVE, NATIVE)
    with torch.no_grad():
        ref_tokens = ref.forward_features(x)
    tokens, cls, gap = _features(loaded.backbone, x)
    assert tokens.shape == (2, 1 + regs + 16, 384)
    assert (tokens - ref_tokens).abs().max() < 1e-4
    assert (cls - ref_tokens[:, 0]).abs().max() < 1e-4
    # GAP and LAST see patch tokens only: registers are prefix tokens, never averaged in
    assert (gap - ref_tokens[:, 1 + regs:].mean(1)).abs().max() < 1e-4
    if regs:
        assert (gap - ref_tokens[:, 1:].mean(1)).abs().max() > 1e-3  # the test can tell registers apart


def test_default_size_is_224_and_image_size_interpolates_like_timm(tmp_path):
    """timm's own pretrained path (checkpoint_filter_fn into a model built at the new size) is the reference."""
    ref = reference("vit_small_patch14_reg4_dinov2", seed=3)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(to_dinov2_layout(ref.state_dict()), path)
    default = load_model(path)
    a, t = default.arch, default.transform
    assert (a.image_size, a.grid, a.native_image_size) == (224, (16, 16), NATIVE)
    assert (t.resize, t.crop, t.interpolation) == (256, 224, "bicubic")
    assert any("4x4 -> 16x16" in s for s in default.keys.steps)
    for size in (84, 518):
        loaded = load_model(path, LoadOptions(image_size=size))
        other = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=size, depth=2).eval()
        other.load_state_dict(checkpoint_filter_fn(ref.state_dict(), other))
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            diff = (loaded.backbone.tokens(x) - other.forward_features(x)).abs().max()
        assert diff < 1e-4 and loaded.arch.grid == (size // 14, size // 14)
        assert loaded.transform.crop == size and loaded.transform.resize == size * 256 // 224
    with pytest.raises(InputError, match=r"--image-size 100 is not a positive multiple of the patch size 14"):
        load_model(path, LoadOptions(image_size=100))


def test_teacher_checkpoint_and_wrong_heads(tmp_path):
    ref = reference("vit_small_patch14_dinov2", seed=4)
    sd = to_dinov2_layout(ref.state_dict())
    heads = {"dino_head.mlp.0.weight": torch.randn(8, 384), "ibot_head.mlp.0.weight": torch.randn(8, 384)}
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": {**{"backbone." + k: v for k, v in sd.items()}, **heads}}, path)
    loaded = load_model(path, LoadOptions(image_size=NATIVE))
    assert sorted(loaded.keys.dropped) == sorted([*heads, "mask_token"])
    x = torch.randn(1, 3, NATIVE, NATIVE)
    with torch.no_grad():
        assert (loaded.backbone.tokens(x) - ref.forward_features(x)).abs().max() < 1e-4
    with pytest.raises(InputError, match=r"--num-heads 5 does not divide the width 384 .*patch_embed.proj.weight"):
        load_model(path, LoadOptions(num_heads=5))
    with pytest.raises(InputError, match=r"--num-heads 4 contradicts .*DINOv2 vit_small.*6 heads"):
        load_model(path, LoadOptions(num_heads=4))


def test_inspect_names_registers(tmp_path):
    path = tmp_path / "reg.pth"
    torch.save(to_dinov2_layout(reference("vit_small_patch14_reg4_dinov2").state_dict()), path)
    r = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["arch"]["num_registers"] == 4 and info["arch"]["num_prefix_tokens"] == 5
    assert info["family"] == "dinov2" and info["dropped"] == ["mask_token"]
    from lastvit_eval.commands.inspect import _prefix

    r = CliRunner().invoke(app, ["inspect", str(path)])
    assert r.exit_code == 0 and "registers" in r.output  # the table (its width depends on the terminal) ...
    assert _prefix(load_model(path).arch) == "5 (CLS + 4 registers)"  # ... says this


def test_swiglu_giant_layout(tmp_path):
    """ViT-g's SwiGLU FFN (`mlp.w12` / `mlp.w3` in DINOv2's layout) onto timm's SwiGLUPacked; a narrow stand-in of
    timm's vit_giant_patch14_dinov2 (width 96 is not in DINOv2's table: --num-heads is required and says so)."""
    torch.manual_seed(0)
    ref = timm.create_model("vit_giant_patch14_dinov2", pretrained=False, img_size=28, depth=2, embed_dim=96,
                            num_heads=4).eval()
    with torch.no_grad():
        for k, p in ref.named_parameters():
            if "gamma" in k or "norm" in k:
                p.add_(torch.randn_like(p) * 0.5)
    sd = {k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3."): v
          for k, v in to_dinov2_layout(ref.state_dict()).items()}
    path = tmp_path / "g.pth"
    torch.save(sd, path)
    with pytest.raises(InputError, match=r"width 96 .*not in the standard ViT table.*pass --num-heads"):
        load_model(path)
    loaded = load_model(path, LoadOptions(num_heads=4, image_size=28))
    assert loaded.arch.mlp_dim == ref.blocks[0].mlp.fc2.in_features and loaded.arch.heads_source == "--num-heads"
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert (loaded.backbone.tokens(x) - ref.forward_features(x)).abs().max() < 1e-4
