"""`--resolution full` for torchvision and OpenCLIP ViTs (engine/full_res.py, models/torchvision_vit.py,
models/openclip_vit.py): square inputs against each library's own model resized by its own function
(torchvision `interpolate_embeddings`, open_clip `resize_pos_embed`), non-square inputs against a
transcription of the forward with the position table resampled by `F.interpolate` here, and `corloc` through
the CLI (`lost`, `last-votes`) against boxes recomputed from that transcription, IoU by pixel counting."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_vit
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, resize_pos_embed
from PIL import Image
from test_corloc_cli import VOC, devkit, pixel_iou, voc_truth  # noqa: F401 - devkit is a fixture
from test_corloc_methods import lost_transcribed
from test_discovery_cli import _votes_patches
from tiny_models import tiny_clip
from torchvision import transforms
from torchvision.models import VisionTransformer
from torchvision.models.vision_transformer import interpolate_embeddings
from typer.testing import CliRunner

from lastvit_eval.app import app
from lastvit_eval.engine.full_res import full_resolution
from lastvit_eval.models import load_model
from lastvit_eval.pooling import PoolingSpec, pool

runner = CliRunner()
PATCH, NATIVE = 8, 32
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture
def tv_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "tv_tiny.pth"
    torch.save(tiny_vit(seed=6).state_dict(), path)
    return path


@pytest.fixture
def clip_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(tiny_clip(seed=7).state_dict(), path)
    return path


def _tv_library(size: int, ckpt: Path) -> VisionTransformer:
    """torchvision's own model at `size`, its state dict passed through `interpolate_embeddings`."""
    m = VisionTransformer(image_size=size, patch_size=PATCH, num_layers=2, num_heads=3, hidden_dim=192, mlp_dim=96,
                          num_classes=10)
    m.load_state_dict(interpolate_embeddings(size, PATCH, torch.load(ckpt, weights_only=True)))
    return m.eval()


def _clip_library(size: int, ckpt: Path) -> CLIP:
    """open_clip's own CLIP at `size`, its state dict passed through `resize_pos_embed`."""
    m = CLIP(32, vision_cfg=CLIPVisionCfg(layers=2, width=192, head_width=64, patch_size=PATCH, image_size=size),
             text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1))
    sd = torch.load(ckpt, weights_only=True)
    resize_pos_embed(sd, m)
    m.load_state_dict(sd)
    return m.eval()


@pytest.mark.parametrize("size", [24, 48])  # shrink (antialias acts for open_clip) and grow
def test_square_full_res_equals_the_library_resized_model(tv_ckpt, clip_ckpt, size):
    x = torch.randn(2, 3, size, size)
    seen = {}
    tv_ref = _tv_library(size, tv_ckpt)
    clip_ref = _clip_library(size, clip_ckpt)
    h1 = tv_ref.encoder.ln.register_forward_hook(lambda m, i, o: seen.__setitem__("tv", o))
    h2 = clip_ref.visual.ln_post.register_forward_hook(lambda m, i, o: seen.__setitem__("clip", o))
    tv, clip = full_resolution(load_model(tv_ckpt)), full_resolution(load_model(clip_ckpt))
    with torch.no_grad():
        tv_ref(x)
        clip_ref.encode_image(x)
        got_tv, got_clip = tv.backbone.tokens(x), clip.backbone.tokens(x)
    h1.remove()
    h2.remove()
    n = 1 + (size // PATCH) ** 2
    assert got_tv.shape == seen["tv"].shape == (2, n, 192)
    assert got_clip.shape == seen["clip"].shape == (2, n, 192)
    assert (got_tv - seen["tv"]).abs().max() < 1e-4
    assert (got_clip - seen["clip"]).abs().max() < 1e-4
    assert tv.transform.kind == clip.transform.kind == "full-padded"


def test_full_res_is_an_explicit_copy(tv_ckpt, clip_ckpt):
    """The loaded model keeps its native-size backbone and transform; the copy shares the weights."""
    for ckpt in (tv_ckpt, clip_ckpt):
        model = load_model(ckpt)
        full = full_resolution(model)
        assert full.backbone is not model.backbone and model.transform.kind == "resize-crop"
        assert {p.data_ptr() for p in full.backbone.parameters()} == {p.data_ptr() for p in model.backbone.parameters()}
        assert full_resolution(full) is full
    with pytest.raises(AssertionError):  # torchvision's own check: the native backbone takes no other size
        load_model(tv_ckpt).backbone.tokens(torch.randn(1, 3, 48, 48))
    # --image-size already resampled the table once: full resolution refuses rather than resample it again
    from lastvit_eval.errors import InputError
    from lastvit_eval.models import LoadOptions

    for ckpt in (tv_ckpt, clip_ckpt):
        with pytest.raises(InputError, match=r"drop --image-size 48 \(it would resample a resampled table\)"):
            full_resolution(load_model(ckpt, LoadOptions(image_size=48)))


def _tv_pos(pos: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """torchvision interpolate_embeddings' steps, written out for a (gh, gw) target."""
    g = 4
    img = pos[:, 1:].permute(0, 2, 1).reshape(1, -1, g, g)
    img = F.interpolate(img, size=(gh, gw), mode="bicubic", align_corners=True)
    return torch.cat([pos[:, :1], img.flatten(2).permute(0, 2, 1)], dim=1)


def _clip_pos(pos: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """open_clip resize_pos_embed's steps, written out for a (gh, gw) target."""
    g = 4
    img = pos[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=(gh, gw), mode="bicubic", antialias=True, align_corners=False)
    return torch.cat([pos[:1], img.permute(0, 2, 3, 1).reshape(gh * gw, -1)], dim=0)


def tv_transcribed(m: VisionTransformer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's forward to encoder.ln with `_tv_pos`; also the last block's attention input (LOST's hook)."""
    p = m.conv_proj(x)
    gh, gw = p.shape[-2:]
    t = torch.cat([m.class_token.expand(x.shape[0], -1, -1), p.flatten(2).transpose(1, 2)], dim=1)
    t = t + _tv_pos(m.encoder.pos_embedding, gh, gw)
    for i, block in enumerate(m.encoder.layers):
        if i == len(m.encoder.layers) - 1:
            attn_in = block.ln_1(t)
        t = block(t)
    return m.encoder.ln(t), attn_in


def clip_transcribed(c: CLIP, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """open_clip's _embeds / transformer / ln_post with `_clip_pos`; also the last block's attention input."""
    v = c.visual
    p = v.conv1(x)
    gh, gw = p.shape[-2:]
    t = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), p.flatten(2).transpose(1, 2)], dim=1)
    t = v.ln_pre(t + _clip_pos(v.positional_embedding, gh, gw))
    for i, block in enumerate(v.transformer.resblocks):
        if i == len(v.transformer.resblocks) - 1:
            attn_in = block.ln_1(t)
        t = block(t)
    return v.ln_post(t), attn_in


def test_non_square_grid_and_position_table(tv_ckpt, clip_ckpt):
    from lastvit_eval.models.openclip_vit import resample_positional_embedding
    from lastvit_eval.models.torchvision_vit import resample_pos_embedding

    x = torch.randn(2, 3, 24, 56)  # grid 3 x 7 from a 4 x 4 table: shrink one side, grow the other
    tv, clip = full_resolution(load_model(tv_ckpt)), full_resolution(load_model(clip_ckpt))
    tv_m, clip_m = tv.backbone.model, clip.backbone.clip
    want_tv, want_clip = _tv_pos(tv_m.encoder.pos_embedding, 3, 7), _clip_pos(clip_m.visual.positional_embedding, 3, 7)
    assert want_tv.shape == (1, 22, 192) and want_clip.shape == (22, 192)
    assert torch.equal(resample_pos_embedding(tv_m.encoder.pos_embedding, (3, 7)), want_tv)
    assert torch.equal(resample_positional_embedding(clip_m.visual.positional_embedding, (3, 7)), want_clip)
    # a 2 x 8 grid holds as many tokens as the 4 x 4 table, and is still resampled (open_clip would skip it)
    assert not torch.equal(resample_positional_embedding(clip_m.visual.positional_embedding, (2, 8))[1:],
                           clip_m.visual.positional_embedding[1:])
    with torch.no_grad():
        got_tv, got_clip = tv.backbone.tokens(x), clip.backbone.tokens(x)
        ref_tv, ref_clip = tv_transcribed(tv_m, x)[0], clip_transcribed(clip_m, x)[0]
    assert got_tv.shape == got_clip.shape == (2, 22, 192)
    assert (got_tv - ref_tv).abs().max() < 1e-4 and (got_clip - ref_clip).abs().max() < 1e-4
    with pytest.raises(ValueError, match="not a multiple of the patch"):
        tv.backbone.tokens(torch.randn(1, 3, 20, 24))


def _fed(path: Path, mean_std) -> torch.Tensor:
    """The image as LOST feeds it: ToTensor + Normalize (the family's mean / std), zero-padded to the patch."""
    img = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*mean_std)])(Image.open(path).convert("RGB"))
    h, w = img.shape[1:]
    padded = torch.zeros(3, math.ceil(h / PATCH) * PATCH, math.ceil(w / PATCH) * PATCH)
    padded[:, :h, :w] = img
    return padded[None]


def _reference_box(ref: VisionTransformer | CLIP, method: str, path: Path) -> list[float] | None:
    """The box from the transcribed forward of `ref` (the library's own model at its native size)."""
    w, h = Image.open(path).size
    with torch.no_grad():
        if isinstance(ref, VisionTransformer):
            x = _fed(path, IMAGENET)
            tokens, attn_in = tv_transcribed(ref, x)
            in_proj = ref.encoder.layers[-1].self_attention
        else:
            x = _fed(path, (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD))
            tokens, attn_in = clip_transcribed(ref, x)
            in_proj = ref.visual.transformer.resblocks[-1].attn
    grid = (x.shape[2] // PATCH, x.shape[3] // PATCH)
    if method == "lost":  # LOST: keys of every head, concatenated as the packed projection lays them out
        keys = F.linear(attn_in, in_proj.in_proj_weight, in_proj.in_proj_bias)[0, 1:, 192:384].detach()
        return lost_transcribed(keys.half().double(), grid, PATCH, (h, w), 100)
    v = pool(tokens, 1, PoolingSpec("last")).votes[0].reshape(grid).double().numpy()
    if (found := _votes_patches(v, grid)) is None:
        return None
    r0, r1, c0, c1 = found
    return [c0 * PATCH, r0 * PATCH, min(c1 * PATCH, w), min(r1 * PATCH, h)]


@pytest.mark.parametrize("family", ["torchvision", "openclip"])
@pytest.mark.parametrize("method", ["lost", "last-votes"])
def test_corloc_full_resolution_through_the_cli(devkit, tv_ckpt, clip_ckpt, tmp_path, family, method):  # noqa: F811
    ckpt = tv_ckpt if family == "torchvision" else clip_ckpt
    out = tmp_path / "out"
    extra = ["-p", "last"] if method == "last-votes" else []
    r = runner.invoke(app, ["corloc", "-c", str(ckpt), "--voc-root", str(devkit), "--year", "2007", "--method",
                            method, *extra, "--resolution", "full", "-o", str(out), "--workers", "0",
                            "--no-progress", "--cache-dir", str(tmp_path / "store")])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "last-k1" / "metrics.json").read_text())
    assert rec["provenance"]["transform"]["kind"] == "full-padded" and rec["provenance"]["model"]["family"] == family
    rows = pd.read_csv(out / "last-k1" / "corloc_rows.csv", dtype={"image_id": str})
    assert sorted(rows["image_id"]) == sorted(i for i, _, _ in VOC)
    base = devkit / "VOCdevkit" / "VOC2007" / "JPEGImages"
    ref = (_tv_library if family == "torchvision" else _clip_library)(NATIVE, ckpt)  # at NATIVE: no resampling
    hits, boxes = [], 0
    for image_id, _, _ in VOC:
        box = _reference_box(ref, method, base / f"{image_id}.jpg")
        row = rows[rows["image_id"] == image_id].iloc[0]
        if box is None:
            assert row["status"] == "no_box" and not row["hit"]
            hits.append(False)
            continue
        boxes += 1
        assert row[["x0", "y0", "x1", "y1"]].to_numpy(float).tolist() == pytest.approx(box), image_id
        ious = [pixel_iou(box, g) for g in voc_truth(devkit, image_id)]
        assert row["iou"] == pytest.approx(max(ious), abs=1e-6)
        assert bool(row["hit"]) == (max(ious) >= 0.5)
        hits.append(max(ious) >= 0.5)
    assert boxes >= 2  # boxes were found and scored, not only no_box rows
    assert rec["metrics"]["corloc.hit"]["value"] == pytest.approx(100 * np.mean(hits))
