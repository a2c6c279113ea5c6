"""CLIP ViTs (OpenAI and OpenCLIP weights), built with open_clip's own CLIP class.

Forms: OpenCLIP training checkpoints `{'epoch', 'name', 'state_dict': {'module.visual.*', ...}}`,
OpenCLIP / OpenAI state dicts (`visual.*` plus the text tower), and OpenAI TorchScript archives
(`read_checkpoint` returns their state dict when trusted). The config is inferred from shapes the way
open_clip's `build_model_from_openai_state_dict` does, extended to MLP ratio, layer scale, heads.

QuickGELU rule (OpenAI trained with QuickGELU, OpenCLIP defaults to GELU; the weights cannot tell):
1. `--quick-gelu/--no-quick-gelu` wins;
2. OpenAI markers (`input_resolution`, `context_length`, `vocab_size` entries, present in OpenAI's
   TorchScript archives and state dicts taken from them) -> QuickGELU;
3. OpenCLIP training checkpoint -> QuickGELU iff its run `name` contains "quickgelu" (open_clip's default
   run name embeds the model name, e.g. `...-model_ViT-B-32-quickgelu-...`);
4. otherwise GELU (open_clip's default). The decision is recorded in the key report.

Full resolution (`--resolution full`, `OpenCLIPBackbone.at_full_resolution`): open_clip resamples position
embeddings only when loading, with `open_clip.model.resize_pos_embed` (state dict -> the model's square
`grid_size`). `resample_positional_embedding` is that function generalised to a grid (gh, gw): one class-token
row kept as is, the patch rows reshaped [1, D, g, g] and resampled with the same call,
`F.interpolate(size=(gh, gw), mode="bicubic", antialias=True, align_corners=False)` (antialias acts when
shrinking), flattened row-major after the class row. It differs in that the target may be non-square, it
runs per forward on the loaded parameter (in float32, cast back to the parameter's dtype), and it skips the
call when (gh, gw) equals the native grid, where open_clip skips when the token count is unchanged (which
would leave, say, a 2x8 grid on a 4x4 table unresized). The forward is open_clip's `_embeds` (conv1, class
token, position table, patch dropout, ln_pre) with the resampled table, then `transformer` and `ln_post`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from ..data.transform import clip_vit
from ..errors import InputError
from .arch_config import ArchHint, openclip_run_hint, resolve_heads
from .base import ArchSpec, Backbone, KeyReport, LoadedModel, LoadOptions
from .keys import (
    drop_keys,
    is_state_dict,
    strict_load,
    strip_if_all,
    to_float32,
)

if TYPE_CHECKING:  # open_clip is imported where a model is built: detecting a family stays cheap
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

FAMILY = "openclip"
OPENAI_MARKERS = ("input_resolution", "context_length", "vocab_size")
SIZE_NAMES = {768: "B", 1024: "L", 1280: "H", 1408: "g", 1664: "bigG", 384: "S", 192: "Ti"}
TEXT_HEAD_WIDTH = 64  # open_clip / OpenAI text towers: heads = width // 64


def unwrap(raw, opts: LoadOptions | None = None) -> tuple[dict, KeyReport, dict] | None:
    """Find a CLIP state dict; returns it, the key report and hints (run name, OpenAI markers)."""
    found = unwrap_any(raw, opts)
    return found if found is not None and "visual.conv1.weight" in found[0] else None


def unwrap_any(raw, opts: LoadOptions | None = None) -> tuple[dict, KeyReport, dict] | None:
    """`unwrap` for any CLIP image tower (`visual.*`: ViT, ResNet, timm trunk)."""
    opts = opts or LoadOptions()
    report = KeyReport(format="CLIP state_dict")
    hints: dict = {"training_name": None, "openai_markers": False}
    obj = raw
    if isinstance(obj, dict) and opts.checkpoint_key is not None and opts.checkpoint_key in obj:
        obj = obj[opts.checkpoint_key]
        report.steps.append(f"took checkpoint['{opts.checkpoint_key}'] (--checkpoint-key)")
    elif isinstance(obj, dict) and "state_dict" in obj and is_state_dict(obj["state_dict"]):
        report.format = "OpenCLIP training checkpoint {'epoch', 'name', 'state_dict'}"
        hints["training_name"] = str(obj.get("name", ""))
        obj = obj["state_dict"]
        report.steps.append("took checkpoint['state_dict']")
    if not is_state_dict(obj):
        return None
    sd = dict(obj)
    sd = strip_if_all(sd, "module.", report.steps)
    if not any(k.startswith("visual.") for k in sd):
        return None
    markers = [k for k in OPENAI_MARKERS if k in sd]
    if markers:
        hints["openai_markers"] = True
        report.format = "OpenAI CLIP state_dict (TorchScript layout)"
        for k in markers:
            sd.pop(k)
        report.dropped.extend(markers)
        report.steps.append(f"dropped OpenAI scalar entries {', '.join(markers)}")
    if "attn_mask" in sd:  # a buffer that open_clip rebuilds (not persistent); TorchScript state dicts carry it
        sd.pop("attn_mask")
        report.dropped.append("attn_mask")
    return sd, report, hints


def detect(raw) -> bool:
    return unwrap(raw) is not None


def quick_gelu_rule(opts: LoadOptions, hints: dict) -> tuple[bool, str]:
    """See the module docstring; returns the choice and why, for the key report."""
    if opts.quick_gelu is not None:
        return opts.quick_gelu, "--quick-gelu" if opts.quick_gelu else "--no-quick-gelu"
    if hints.get("openai_markers"):
        return True, "OpenAI markers present"
    name = hints.get("training_name")
    if name is not None:
        if "quickgelu" in name.lower():
            return True, f"training run name {name!r} mentions quickgelu"
        return False, "OpenCLIP training checkpoint without quickgelu in its run name"
    return False, "no OpenAI markers (open_clip default); pass --quick-gelu for OpenAI-trained weights"


def _count(sd: dict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in sd if (m := pat.match(k))})


def _need(sd: dict, key: str, source: str) -> torch.Tensor:
    if key not in sd:
        raise InputError(f"{source}: missing key {key!r} needed to infer the CLIP architecture")
    return sd[key]


def infer_config(sd: dict, opts: LoadOptions, source: str,
                 hint: ArchHint | None = None) -> tuple[int, CLIPVisionCfg, CLIPTextCfg, dict]:
    """embed_dim, vision/text configs and CLIP kwargs, from shapes (ViT towers only).

    kwargs carries `heads_source` / `config` (popped by `load`) so the ArchSpec can say where heads came from.
    """
    if any(k.startswith("visual.layer1.") for k in sd):
        raise InputError(f"{source}: ResNet CLIP towers are not supported (ViT only)")
    if any(k.startswith("visual.attn_pool") for k in sd):
        raise InputError(f"{source}: CLIP towers with an attentional pooler are not supported")
    conv = _need(sd, "visual.conv1.weight", source)
    width, patch = conv.shape[0], conv.shape[-1]
    seq = _need(sd, "visual.positional_embedding", source).shape[0]
    grid = round((seq - 1) ** 0.5)
    if grid * grid != seq - 1:
        raise InputError(f"{source}: visual.positional_embedding has {seq} tokens, not 1 + a square grid")
    layers = _count(sd, "visual.transformer.resblocks.")
    if layers == 0:
        raise InputError(f"{source}: no visual.transformer.resblocks.N tensors found")
    mlp = _need(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight", source).shape[0]
    heads, heads_source, config = resolve_heads(width, f"visual.conv1.weight {tuple(conv.shape)}", patch,
                                                opts.num_heads, hint, source)
    embed_dim = _need(sd, "visual.proj", source).shape[1]
    from open_clip.model import CLIPVisionCfg

    vision = CLIPVisionCfg(
        layers=layers,
        width=width,
        head_width=width // heads,
        mlp_ratio=mlp / width,
        patch_size=patch,
        image_size=grid * patch,
        ls_init_value=1e-5 if "visual.transformer.resblocks.0.ls_1.gamma" in sd else None,
        no_ln_pre="visual.ln_pre.weight" not in sd,
    )
    text = text_config(sd, source)
    kwargs = {**clip_kwargs(sd), "heads_source": heads_source, "config": config}
    return int(embed_dim), vision, text, kwargs


def text_config(sd: dict, source: str) -> CLIPTextCfg:
    """The text tower's config from shapes (shared by ViT and ResNet CLIPs)."""
    from open_clip.model import CLIPTextCfg

    t_width = _need(sd, "ln_final.weight", source).shape[0]
    t_layers = _count(sd, "transformer.resblocks.")
    t_mlp = _need(sd, "transformer.resblocks.0.mlp.c_fc.weight", source).shape[0]
    return CLIPTextCfg(
        context_length=_need(sd, "positional_embedding", source).shape[0],
        vocab_size=_need(sd, "token_embedding.weight", source).shape[0],
        width=t_width,
        heads=max(1, t_width // TEXT_HEAD_WIDTH),
        layers=t_layers,
        mlp_ratio=t_mlp / t_width,
        ls_init_value=1e-5 if "transformer.resblocks.0.ls_1.gamma" in sd else None,
        proj_bias="text_projection.bias" in sd,
    )


def clip_kwargs(sd: dict) -> dict:
    """Logit scale / bias shapes, which CLIP's constructor must be told."""
    scale = sd.get("logit_scale")
    return {"init_logit_bias": 0.0 if "logit_bias" in sd else None,
            "nonscalar_logit_scale": scale is not None and scale.ndim > 0}


def resample_positional_embedding(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`visual.positional_embedding` [1 + g*g, D] -> [1 + gh*gw, D]: `resize_pos_embed` for (gh, gw)."""
    from .resolution import resample_grid_rows

    native = pos[1:]
    rows = resample_grid_rows(native, grid, antialias=True, align_corners=False)
    return pos if rows is native else torch.cat([pos[:1], rows], dim=0)


class OpenCLIPBackbone(Backbone):
    """The vision tower seen as tokens -> pool -> `visual.proj`; the text tower stays on `self.clip`."""

    def __init__(self, model: CLIP, details: dict, full_resolution: bool = False) -> None:
        super().__init__()
        self.clip = model
        self.details = details
        self.num_prefix_tokens = 1
        self.full_resolution = full_resolution

    def at_full_resolution(self) -> OpenCLIPBackbone:
        return OpenCLIPBackbone(self.clip, self.details, full_resolution=True)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        v = self.clip.visual
        if self.full_resolution:
            return v.ln_post(v.transformer(self._full_res_embeds(x)))
        return v.ln_post(v.transformer(v._embeds(x)))  # what open_clip's _pool sees, before pooling

    def _full_res_embeds(self, x: torch.Tensor) -> torch.Tensor:
        """open_clip's `VisionTransformer._embeds` with the position table resampled to the input's grid."""
        v = self.clip.visual
        p = v.conv1.stride[-1]
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"full resolution: input {tuple(x.shape[-2:])} is not a multiple of the patch {p}")
        x = v.conv1(x)
        n, d, gh, gw = x.shape
        x = x.reshape(n, d, gh * gw).permute(0, 2, 1)
        x = torch.cat([v.class_embedding.view(1, 1, -1).expand(n, -1, -1).to(x.dtype), x], dim=1)
        x = x + resample_positional_embedding(v.positional_embedding, (gh, gw)).to(x.dtype)
        return v.ln_pre(v.patch_dropout(x))

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        proj = self.clip.visual.proj
        return pooled if proj is None else pooled @ proj.to(pooled.dtype)

    def blocks(self) -> list[torch.nn.Module]:
        t = self.clip.visual.transformer
        if not getattr(t, "batch_first", True):  # open_clip < 2.23 runs its blocks sequence-first
            return []
        return list(t.resblocks)  # after ln_pre, before ln_post


def load(raw, opts: LoadOptions, source: str, sha256: str | None, hint: ArchHint | None = None) -> LoadedModel:
    """`hint`: a config known from outside the file (a hub name); else the training run name, if any."""
    found = unwrap(raw, opts)
    if found is None:
        raise InputError(f"{source}: not a CLIP checkpoint (no visual.conv1.weight after unwrapping)")
    sd, report, hints = found
    sd, ignored = drop_keys(sd, opts.ignore_keys)
    report.ignored = ignored
    sd = to_float32(sd)
    embed_dim, vision, text, kwargs = infer_config(
        sd, opts, source, hint if hint is not None else openclip_run_hint(hints.get("training_name")))
    heads_source, config = kwargs.pop("heads_source"), kwargs.pop("config")
    native = int(vision.image_size)
    if opts.image_size and opts.image_size != native:  # --image-size: open_clip's resize_pos_embed, below
        from .resolution import check_image_size

        check_image_size(opts.image_size, int(vision.patch_size), source)
        vision.image_size = opts.image_size
    quick_gelu, why = quick_gelu_rule(opts, hints)
    report.steps.append(f"activation: {'QuickGELU' if quick_gelu else 'GELU'} ({why})")
    from open_clip.model import CLIP

    model = CLIP(embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu, **kwargs)
    arch = ArchSpec(
        family=FAMILY,
        name=f"ViT-{SIZE_NAMES.get(vision.width, f'w{vision.width}')}-{vision.patch_size}",
        image_size=int(vision.image_size),
        patch_size=int(vision.patch_size),
        width=int(vision.width),
        depth=int(vision.layers),
        heads=int(vision.width // vision.head_width),
        mlp_dim=int(round(vision.width * vision.mlp_ratio)),
        num_prefix_tokens=1,
        num_classes=None,
        embed_dim=embed_dim,
        heads_source=heads_source,
        config=config,
        native_image_size=native if native != vision.image_size else None,
    )
    if native != vision.image_size:
        from open_clip.model import resize_pos_embed

        resize_pos_embed(sd, model)  # in place, bicubic + antialias, as open_clip does when loading
        g0, g1 = native // vision.patch_size, vision.image_size // vision.patch_size
        report.steps.append(f"visual.positional_embedding resized {g0}x{g0} -> {g1}x{g1} for {vision.image_size}px "
                            "(open_clip resize_pos_embed)")
    strict_load(model, sd, source, report, arch)
    model.eval().requires_grad_(False)
    details = {
        "quick_gelu": quick_gelu,
        "text": {"width": text.width, "layers": text.layers, "heads": text.heads,
                 "context_length": text.context_length, "vocab_size": text.vocab_size},
        "params_visual": sum(p.numel() for p in model.visual.parameters()),
    }
    return LoadedModel(
        backbone=OpenCLIPBackbone(model, details),
        arch=arch,
        transform=clip_vit(arch.image_size),
        keys=report,
        source=source,
        sha256=sha256,
        params=sum(p.numel() for p in model.parameters()),
    )
