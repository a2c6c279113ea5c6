"""Load-time refusals and records: non-finite weights, head counts (config / flag / assumed), the key report on
failed loads, and files whose content is not what their name says. Real files in tmp dirs throughout."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_models_dino import main_dino
from timm.models.vision_transformer import VisionTransformer as TimmViT
from tiny_models import tiny_clip, tiny_timm
from torchvision.models import VisionTransformer as TvViT
from typer.testing import CliRunner

from lastvit_eval.app import app
from lastvit_eval.errors import InputError
from lastvit_eval.models import LoadOptions, load_model
from lastvit_eval.models.base import LoadError

runner = CliRunner()


def tv_vit(heads: int = 3, seed: int = 0, num_classes: int = 10) -> TvViT:
    """torchvision ViT of width 192 with any head count (3 is the standard one for that width)."""
    torch.manual_seed(seed)
    m = TvViT(image_size=32, patch_size=8, num_layers=2, num_heads=heads, hidden_dim=192, mlp_dim=96,
              num_classes=num_classes)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "ln" in name or "heads" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


def timm_vit(heads: int, patch: int = 8, seed: int = 0) -> TimmViT:
    torch.manual_seed(seed)
    m = TimmViT(img_size=32, patch_size=patch, embed_dim=192, depth=2, num_heads=heads, num_classes=0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


def one_line(e: pytest.ExceptionInfo, *parts: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------- non-finite weights


def _poison(sd: dict, key: str, value: float) -> dict:
    sd = {k: v.clone() for k, v in sd.items()}
    sd[key].view(-1)[3] = value
    return sd


@pytest.mark.parametrize(("family", "first", "later"), [
    ("torchvision", "encoder.layers.encoder_layer_0.mlp.0.weight", "encoder.ln.weight"),
    ("dino", "blocks.0.attn.qkv.weight", "norm.bias"),
    ("openclip", "visual.transformer.resblocks.0.attn.in_proj_weight", "visual.ln_post.weight"),
])
def test_non_finite_weights_are_a_load_error_naming_the_first_tensor(tmp_path, family, first, later):
    sd = {"torchvision": tv_vit, "dino": tiny_timm, "openclip": tiny_clip}[family]().state_dict()
    sd = _poison(_poison(sd, first, float("nan")), later, float("inf"))
    path = tmp_path / f"{family}.pth"
    torch.save(sd, path)
    with pytest.raises(LoadError) as e:
        load_model(path)
    one_line(e, str(path), repr(first), "1 NaN, 0 inf", "non-finite")
    assert later not in str(e.value)


def test_half_precision_inf_in_safetensors(tmp_path):
    sd = {k: v.half() for k, v in tiny_timm().state_dict().items()}
    sd = _poison(sd, "pos_embed", float("inf"))
    path = tmp_path / "dino.safetensors"
    save_file(sd, str(path))
    with pytest.raises(InputError) as e:
        load_model(path)
    one_line(e, "dino.safetensors", "'pos_embed'", "0 NaN, 1 inf")


def test_large_finite_half_weights_are_not_refused():
    """The fast path sums each tensor; an fp16 sum that overflows must fall back to the exact test."""
    from lastvit_eval.models.keys import check_finite

    big = torch.full((1000,), 60000.0, dtype=torch.float16)
    assert not torch.isfinite(big.sum())
    check_finite({"w": big, "step": torch.tensor(3)}, "x.pth")  # no error
    big[7] = float("-inf")
    with pytest.raises(LoadError, match=r"x.pth: tensor 'w' \(1000,\) has non-finite values \(0 NaN, 1 inf"):
        check_finite({"w": big}, "x.pth")


def test_inspect_non_finite_exits_2(tmp_path):
    path = tmp_path / "nan.pth"
    torch.save(_poison(tv_vit().state_dict(), "conv_proj.weight", float("nan")), path)
    r = runner.invoke(app, ["inspect", str(path)])
    assert r.exit_code == 2 and "'conv_proj.weight'" in r.stderr and "non-finite" in r.stderr


# ------------------------------------------------------------------------------------------------------ head counts


def test_non_standard_heads_without_config_are_recorded_as_assumed(tmp_path):
    """Width 192 with 4 heads: the tensors cannot tell; the load says it assumed 3, and --num-heads 4 fixes it."""
    ref = tv_vit(heads=4)
    path = tmp_path / "w192h4.pth"
    torch.save(ref.state_dict(), path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ref(x)  # torchvision's own forward
    assumed = load_model(path)
    assert assumed.arch.heads == 3 and assumed.arch.heads_source == "assumed from width"
    prov = assumed.provenance()
    assert prov["arch"]["heads_source"] == "assumed from width" and json.loads(json.dumps(prov)) == prov
    with torch.no_grad():
        wrong = assumed.backbone.head(assumed.backbone.tokens(x)[:, 0])
    assert (wrong - expected).abs().max() > 1e-3  # why the assumption must be visible
    told = load_model(path, LoadOptions(num_heads=4))
    with torch.no_grad():
        right = told.backbone.head(told.backbone.tokens(x)[:, 0])
    assert (right - expected).abs().max() < 1e-5
    assert told.arch.heads == 4 and told.provenance()["arch"]["heads_source"] == "--num-heads"


def test_inspect_says_heads_were_assumed(tmp_path):
    path = tmp_path / "w192h4.pth"
    torch.save(tv_vit(heads=4).state_dict(), path)
    r = runner.invoke(app, ["inspect", str(path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["arch"]["heads_source"] == "assumed from width"
    r = runner.invoke(app, ["inspect", str(path)], terminal_width=200)
    assert r.exit_code == 0 and "assumed from width" in r.stdout


def test_num_heads_must_divide_the_width(tmp_path):
    path = tmp_path / "c.pth"
    torch.save(tiny_timm().state_dict(), path)
    with pytest.raises(InputError) as e:
        load_model(path, LoadOptions(num_heads=5))
    one_line(e, "c.pth", "--num-heads 5 does not divide the width 192", "patch_embed.proj.weight (192, 3, 8, 8)")


def test_dino_args_arch_gives_heads_and_is_checked(tmp_path):
    """DINO's pickled `args` (needs --trust-checkpoint) carries arch: vit_tiny means 3 heads of width 192."""
    ref = timm_vit(heads=3, seed=1)
    path = tmp_path / "checkpoint0100.pth"
    torch.save(main_dino(ref, timm_vit(heads=3, seed=2), arch="vit_tiny", patch_size=8), path)
    loaded = load_model(path, LoadOptions(trust=True))
    a = loaded.arch
    assert (a.heads, a.heads_source, a.config) == (3, "checkpoint config", "args.arch='vit_tiny' (DINO)")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (loaded.backbone.tokens(x) - ref.forward_features(x)).abs().max() < 1e-4
    with pytest.raises(InputError) as e:  # the flag contradicts the file's own config
        load_model(path, LoadOptions(trust=True, num_heads=4))
    one_line(e, "checkpoint0100.pth", "--num-heads 4 contradicts", "args.arch='vit_tiny'", "3 heads",
             "patch_embed.proj.weight (192, 3, 8, 8)")
    assert load_model(path, LoadOptions(trust=True, num_heads=3)).arch.heads_source == "--num-heads"


def test_dino_args_arch_that_contradicts_the_tensors(tmp_path):
    """A width-192, 4-head ViT saved with args.arch='vit_small' (384 wide, 6 heads): refused, shapes named."""
    path = tmp_path / "checkpoint.pth"
    torch.save(main_dino(timm_vit(heads=4), timm_vit(heads=4), arch="vit_small", patch_size=8), path)
    with pytest.raises(InputError) as e:
        load_model(path, LoadOptions(trust=True))
    one_line(e, "checkpoint.pth", "args.arch='vit_small'", "width 384 with 6 heads", "tensors have width 192",
             "(192, 3, 8, 8)")
    path2 = tmp_path / "checkpoint_p16.pth"
    torch.save(main_dino(tiny_timm(), tiny_timm(), arch="vit_tiny", patch_size=16), path2)
    with pytest.raises(InputError) as e:
        load_model(path2, LoadOptions(trust=True))
    one_line(e, "patch size 16", "patch size 8")


def test_timm_training_checkpoint_arch(tmp_path):
    """timm's train.py saves `arch`: the config of that timm name (built on the meta device) gives the heads."""
    ref = timm_vit(heads=3, patch=16)
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 3, "arch": "vit_tiny_patch16_224", "state_dict": ref.state_dict()}, path)
    a = load_model(path).arch
    assert (a.heads, a.heads_source) == (3, "checkpoint config") and "vit_tiny_patch16_224" in a.config
    with pytest.raises(InputError, match="--num-heads 4 contradicts"):
        load_model(path, LoadOptions(num_heads=4))
    torch.save({"epoch": 3, "arch": "vit_small_patch16_224", "state_dict": ref.state_dict()}, path)
    with pytest.raises(InputError, match=r"width 384 with 6 heads, but the tensors have width 192"):
        load_model(path)


def test_torchvision_references_args_model(tmp_path):
    path = tmp_path / "model_29.pth"
    torch.save({"model": tv_vit().state_dict(), "args": argparse.Namespace(model="vit_b_16")}, path)
    with pytest.raises(InputError) as e:
        load_model(path, LoadOptions(trust=True))
    one_line(e, "args.model='vit_b_16'", "width 768 with 12 heads", "conv_proj.weight (192, 3, 8, 8)")


def test_openclip_run_name_is_checked(tmp_path):
    path = tmp_path / "epoch_1.pt"
    sd = {"module." + k: v for k, v in tiny_clip().state_dict().items()}
    torch.save({"epoch": 1, "name": "2024_01_01-model_ViT-B-16-lr_0.0005-b_256", "state_dict": sd}, path)
    with pytest.raises(InputError) as e:
        load_model(path)
    one_line(e, "run name model 'ViT-B-16'", "width 768 with 12 heads", "visual.conv1.weight (192, 3, 8, 8)")
    torch.save({"epoch": 1, "name": "my-own-run", "state_dict": sd}, path)
    assert load_model(path).arch.heads_source == "assumed from width"


# ------------------------------------------------------------------------------------------------------- key report


def test_failed_strict_load_carries_the_key_report(tmp_path):
    sd = tiny_timm().state_dict()
    sd["norm.scale"] = sd.pop("norm.weight")
    sd["blocks.0.mlp.fc2.bias"] = torch.zeros(7)
    path = tmp_path / "renamed.pth"
    torch.save(sd, path)
    with pytest.raises(LoadError) as e:
        load_model(path)
    k = e.value.keys
    assert k.missing == ["norm.weight"] and k.unexpected == ["norm.scale"]
    assert k.mismatched == ["blocks.0.mlp.fc2.bias: checkpoint (7,) vs architecture (192,)"]
    assert e.value.arch is not None and e.value.arch.width == 192

    r = runner.invoke(app, ["inspect", str(path), "--json"])
    assert r.exit_code == 2 and "blocks.0.mlp.fc2.bias" in r.stderr
    info = json.loads(r.stdout)
    assert info["missing"] == ["norm.weight"] and info["unexpected"] == ["norm.scale"]
    assert info["error"].startswith(str(path)) and info["arch"]["width"] == 192

    r = runner.invoke(app, ["inspect", str(path)], terminal_width=200)
    assert r.exit_code == 2 and "norm.weight / norm.scale" in r.stdout and "Error:" in r.stderr


def test_successful_load_has_an_empty_filled_report(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save(tv_vit().state_dict(), path)
    k = load_model(path).keys
    assert k.missing == [] and k.unexpected == [] and k.mismatched == []


# -------------------------------------------------------------------------------------- files that are not what they say


def _sd():
    return {k: v.contiguous() for k, v in tiny_timm().state_dict().items()}


def _torch_zip(p):
    torch.save(_sd(), p)


def _legacy(p):
    torch.save(_sd(), p, _use_new_zipfile_serialization=False)


def _safetensors(p):
    save_file(_sd(), str(p))


@pytest.mark.parametrize(("name", "write", "says", "fix"), [
    ("x.safetensors", _torch_zip, "is a PyTorch zip checkpoint, not safetensors; rename it to .pth", ".pth"),
    ("x.safetensors", _legacy, "is a legacy PyTorch pickle checkpoint, not safetensors; rename it to .pth", ".pth"),
    ("x.pth", _safetensors, "is a safetensors file, not a PyTorch pickle checkpoint; rename it to .safetensors",
     ".safetensors"),
    ("x.bin", _safetensors, "is a safetensors file, not a PyTorch pickle checkpoint; rename it to .safetensors",
     ".safetensors"),
])
def test_misnamed_containers_say_what_they_are(tmp_path, name, write, says, fix):
    path = tmp_path / name
    write(path)
    with pytest.raises(InputError) as e:
        load_model(path)
    assert one_line(e) == f"{path}: {says}"
    renamed = path.rename(path.with_suffix(fix))  # the advice works
    assert load_model(renamed).arch.width == 192


def _truncate(write, keep):
    def w(p):
        write(p)
        b = p.read_bytes()
        p.write_bytes(b[: keep(len(b))])
    return w


@pytest.mark.parametrize(("name", "write", "says"), [
    ("t.pth", lambda p: p.write_text("just some notes\nabout a model\n"),
     "is a text file, not a checkpoint (starts with 'just some notes')"),
    ("t.pth", lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n"),
     "is a Git LFS pointer, not the weights; run `git lfs pull`"),
    ("t.safetensors", lambda p: p.write_text("<!DOCTYPE html><html><body>404</body></html>"), "is an HTML page"),
    ("t.pth", lambda p: p.write_bytes(b""), "is empty (0 bytes); download or copy it again"),
    ("t.safetensors", lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    ("t.pth", _truncate(_torch_zip, lambda n: n // 2), "is a truncated zip archive"),
    ("t.safetensors", _truncate(_safetensors, lambda n: n // 2), "is a truncated safetensors file (tensors end at"),
    ("t.safetensors", _truncate(_safetensors, lambda n: 20), "is a truncated safetensors file (header of"),
    ("t.pth", _truncate(_legacy, lambda n: n // 2), "not a readable legacy PyTorch pickle checkpoint, truncated"),
    ("t.pth", _truncate(_legacy, lambda n: 30), "truncated or corrupt"),
    ("t.pth", lambda p: np.savez(p.open("wb"), a=np.zeros(3)), "is a zip archive but not a PyTorch checkpoint"),
    ("t.pth", lambda p: p.write_bytes(bytes(range(256)) * 4), "not a readable PyTorch checkpoint"),
])
def test_broken_or_foreign_files_are_one_line(tmp_path, name, write, says):
    path = tmp_path / name
    write(path)
    with pytest.raises(InputError) as e:
        load_model(path)
    one_line(e, f"{path}: ", says)
    r = runner.invoke(app, ["inspect", str(path)])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("Error: ")


# --------------------------------------------------------------------------------------------------- timm: options


@pytest.mark.parametrize(("opts", "says"), [
    (LoadOptions(ignore_keys=("head.",)), "--ignore-keys does not apply to timm: names"),
    (LoadOptions(trust=True), "--trust-checkpoint does not apply to timm: names"),
    (LoadOptions(checkpoint_key="student"), "--checkpoint-key does not apply"),
])
def test_timm_names_refuse_options_they_would_ignore(opts, says):
    with pytest.raises(InputError) as e:
        load_model("timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k", opts)
    one_line(e, "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k: ", says)
