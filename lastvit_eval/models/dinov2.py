"""DINOv2 ViTs, with and without registers, as facebookresearch/dinov2 saves them; built with timm.

Forms: the released backbones (`dinov2_vits14_pretrain.pth`, `..._reg4_pretrain.pth`: `cls_token`,
`register_tokens`, `pos_embed` (1 + 37x37 for 518 px at patch 14), `mask_token`, `patch_embed.*`, `blocks.N.*`
with LayerScale `ls1.gamma` / `ls2.gamma`, `norm.*`), the same with block chunks (`blocks.<chunk>.<i>.*`, saved
when `block_chunks > 0`), and training `teacher_checkpoint.pth` files (`{'teacher': {'backbone.*', 'dino_head.*',
'ibot_head.*'}}`; the heads are dropped and listed).

Key mapping (pure functions below), onto timm's VisionTransformer as timm's own DINOv2 models are built:
`blocks.<c>.<i>.` -> `blocks.<i>.`; `mask_token` dropped (only used for iBOT masking in training);
`register_tokens` -> `reg_token`; with registers timm uses `no_embed_class` (the CLS token's position embedding
is folded into it: `cls_token + pos_embed[:, 0]`, and `pos_embed` keeps the patch positions only), which is
exactly DINOv2's forward: CLS gets `pos_embed[0]`, registers get none, tokens are [CLS, registers, patches];
SwiGLU (ViT-g) `mlp.w12` / `mlp.w3` -> `mlp.fc1` / `mlp.fc2` of timm's SwiGLUPacked.

Default image size: 224 (DINOv2's own k-NN / linear evaluation transform: resize 256 bicubic, center crop
224, ImageNet mean/std, with its position embeddings interpolated to 16x16), which also matches the other
families' 224 crops. The 37x37 embeddings are resampled once by timm (`resample_abs_pos_embed`, bicubic,
antialiased), as timm does for its DINOv2 weights; DINOv2's own code interpolates on the fly without
antialiasing, so features at sizes other than 518 differ slightly from its hub forward. `--image-size 518`
evaluates at the trained grid (no interpolation).
"""

from __future__ import annotations

import re

import torch

from ..data.transform import dino_vit
from ..errors import InputError
from .arch_config import ArchHint, resolve_heads
from .base import ArchSpec, KeyReport, LoadedModel, LoadOptions
from .dino_vit import TimmBackbone
from .keys import drop_keys, is_state_dict, select_prefix, strict_load, strip_if_all, to_float32
from .resolution import check_image_size, timm_set_size

FAMILY = "dinov2"
REQUIRED = ("cls_token", "pos_embed", "patch_embed.proj.weight")
DEFAULT_IMAGE_SIZE = 224
# facebookresearch/dinov2 hubconf: vit_small / vit_base / vit_large / vit_giant2 (width -> name, heads)
DINOV2_ARCHS = {384: ("vit_small", 6), 768: ("vit_base", 12), 1024: ("vit_large", 16), 1536: ("vit_giant2", 24)}
SHORT = {384: "s", 768: "b", 1024: "l", 1536: "g"}
_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


def is_chunked(sd: dict) -> bool:
    return any(_CHUNKED.match(k) for k in sd)


def unchunk_blocks(sd: dict) -> dict:
    """`blocks.<chunk>.<i>.*` -> `blocks.<i>.*` (DINOv2's BlockChunk keeps the global block index `i`)."""
    return {_CHUNKED.sub(r"blocks.\2.", k): v for k, v in sd.items()}


def to_timm(sd: dict) -> tuple[dict, list[str]]:
    """DINOv2 key layout -> timm VisionTransformer layout; returns the mapped dict and the dropped keys."""
    out = dict(sd)
    dropped = [k for k in ("mask_token",) if k in out]
    for k in dropped:
        del out[k]
    if "register_tokens" in out:
        pos = out["pos_embed"]
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    renamed = {}
    for k, v in out.items():
        k = re.sub(r"^(blocks\.\d+\.mlp\.)w12\.", r"\1fc1.", k)
        renamed[re.sub(r"^(blocks\.\d+\.mlp\.)w3\.", r"\1fc2.", k)] = v
    return renamed, dropped


def _backbone_dict(raw, opts: LoadOptions, report: KeyReport) -> dict | None:
    """The backbone tensors of a release file or a training checkpoint (teacher by default)."""
    if not isinstance(raw, dict):
        return None
    obj = raw
    key = opts.checkpoint_key
    if key is not None and key in raw and isinstance(raw[key], dict):
        obj = raw[key]
        report.steps.append(f"took checkpoint['{key}'] (--checkpoint-key)")
    elif "teacher" in raw and isinstance(raw["teacher"], dict):
        obj = raw["teacher"]
        report.format = "DINOv2 teacher_checkpoint {'teacher': ...}"
        report.steps.append("took checkpoint['teacher']")
    elif "model" in raw and is_state_dict(raw["model"]):
        obj = raw["model"]
        report.format = "DINOv2 training checkpoint {'model': ...}"
        report.steps.append("took checkpoint['model']")
    if not is_state_dict(obj):
        return None
    sd = strip_if_all(dict(obj), "module.", report.steps)
    who = "student" if key == "student" else "teacher"  # SSLMetaArch's {'model': {'teacher.backbone.*', ...}}
    for prefix in (f"{who}.backbone.", "backbone."):
        if any(k.startswith(prefix) for k in sd):
            rest = sorted(k for k in sd if not k.startswith(prefix))
            sd = select_prefix(sd, prefix)
            report.steps.append(f"took keys under '{prefix}' and stripped it")
            if rest:
                report.dropped.extend(rest)
                report.steps.append(f"dropped {len(rest)} non-backbone keys (DINO / iBOT heads, other model)")
            break
    return sd


def unwrap(raw, opts: LoadOptions | None = None) -> tuple[dict, KeyReport] | None:
    """A DINOv2 backbone state dict: DINO-like keys plus a DINOv2 marker (mask_token, registers, chunks, SwiGLU)."""
    opts = opts or LoadOptions()
    report = KeyReport(format="DINOv2 state_dict (facebookresearch/dinov2)")
    sd = _backbone_dict(raw, opts, report)
    if sd is None or not all(k in sd for k in REQUIRED):
        return None
    markers = ("mask_token" in sd or "register_tokens" in sd or is_chunked(sd)
               or any(k.endswith("mlp.w12.weight") for k in sd))
    if any(k.startswith("decoder_") for k in sd):  # MAE pre-training (mask_token + decoder_*): the timm family's
        return None
    return (sd, report) if markers else None


def detect(raw) -> bool:
    return unwrap(raw) is not None


def _ratio(hidden: int, width: int) -> float:
    """An mlp_ratio whose int(width * ratio) is exactly `hidden` (timm sizes hidden layers that way)."""
    r = hidden / width
    while int(width * r) < hidden:
        r = float(torch.nextafter(torch.tensor(r, dtype=torch.float64), torch.tensor(1e9, dtype=torch.float64)))
    return r


def infer_arch(sd: dict, opts: LoadOptions, source: str) -> tuple[ArchSpec, dict]:
    """ArchSpec (at the native size) and timm VisionTransformer kwargs, from the mapped (timm-layout) tensors."""
    w = sd["patch_embed.proj.weight"]
    width, chans, patch, patch_w = w.shape
    shape = f"patch_embed.proj.weight {tuple(w.shape)}"
    if patch != patch_w:
        raise InputError(f"{source}: non-square patches {patch}x{patch_w} are not supported")
    reg = int(sd["reg_token"].shape[1]) if "reg_token" in sd else 0
    n = sd["pos_embed"].shape[1] - (0 if reg else 1)
    grid = int(round(n ** 0.5))
    if grid * grid != n:
        raise InputError(f"{source}: pos_embed has {sd['pos_embed'].shape[1]} tokens, not "
                         f"{'' if reg else '1 + '}a square grid ({shape})")
    depth = len({m.group(1) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth == 0:
        raise InputError(f"{source}: no blocks.N.* tensors found")
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if fc1 is None:
        raise InputError(f"{source}: missing key 'blocks.0.mlp.fc1.weight' (or mlp.w12 for SwiGLU)")
    swiglu = "blocks.0.mlp.fc2.weight" in sd and sd["blocks.0.mlp.fc2.weight"].shape[1] * 2 == fc1.shape[0]
    hidden = int(fc1.shape[0])
    name, heads_lib = DINOV2_ARCHS.get(width, (None, None))
    hint = ArchHint(f"DINOv2 {name} (facebookresearch/dinov2 hubconf)", heads_lib, width, None,
                    origin="library config") if name else None
    heads, heads_source, config = resolve_heads(width, shape, patch, opts.num_heads, hint, source)
    kwargs = dict(img_size=grid * patch, patch_size=patch, in_chans=chans, embed_dim=width, depth=depth,
                  num_heads=heads, mlp_ratio=_ratio(hidden, width), qkv_bias="blocks.0.attn.qkv.bias" in sd,
                  init_values=1.0 if "blocks.0.ls1.gamma" in sd else None, reg_tokens=reg, no_embed_class=bool(reg),
                  num_classes=0)
    if swiglu:
        from timm.layers import SwiGLUPacked

        kwargs.update(mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU)
    size = opts.image_size or DEFAULT_IMAGE_SIZE
    check_image_size(size, patch, source)
    arch = ArchSpec(family=FAMILY, name=f"dinov2_vit{SHORT.get(width, f'w{width}_')}{patch}" + (f"_reg{reg}" if reg
                    else ""), image_size=size, patch_size=patch, width=width, depth=depth, heads=heads,
                    mlp_dim=hidden // 2 if swiglu else hidden, num_prefix_tokens=1 + reg, num_classes=None,
                    heads_source=heads_source, config=config, num_registers=reg,
                    native_image_size=grid * patch if size != grid * patch else None)
    return arch, kwargs


def load(raw, opts: LoadOptions, source: str, sha256: str | None) -> LoadedModel:
    found = unwrap(raw, opts)
    if found is None:
        raise InputError(f"{source}: not a DINOv2 checkpoint (needs {', '.join(REQUIRED)} and one of mask_token, "
                         "register_tokens, blocks.<chunk>.<i>.*)")
    sd, report = found
    sd, ignored = drop_keys(sd, opts.ignore_keys)
    report.ignored = ignored
    if is_chunked(sd):
        sd = unchunk_blocks(sd)
        report.steps.append("block chunks blocks.<chunk>.<i>.* -> blocks.<i>.*")
    sd, dropped = to_timm(to_float32(sd))
    report.dropped.extend(dropped)
    report.steps.append("DINOv2 -> timm VisionTransformer: " + ", ".join(
        s for s, on in (("mask_token dropped", dropped), ("register_tokens -> reg_token, CLS position folded into "
                        "cls_token (timm no_embed_class)", "reg_token" in sd),
                        ("mlp.w12/w3 -> SwiGLUPacked fc1/fc2", any(".mlp.w12." in k for k in found[0]))) if on))
    arch, kwargs = infer_arch(sd, opts, source)
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(**kwargs)
    strict_load(model, sd, source, report, arch)
    report.steps += timm_set_size(model, arch.image_size, source)
    model.eval().requires_grad_(False)
    backbone = TimmBackbone(model)
    if backbone.num_prefix_tokens != arch.num_prefix_tokens:  # pooling must skip CLS and every register
        raise InputError(f"{source}: timm reports {backbone.num_prefix_tokens} prefix tokens, expected "
                         f"{arch.num_prefix_tokens}")
    return LoadedModel(backbone=backbone, arch=arch, transform=dino_vit(arch.image_size), keys=report,
                       source=source, sha256=sha256, params=sum(p.numel() for p in model.parameters()))
