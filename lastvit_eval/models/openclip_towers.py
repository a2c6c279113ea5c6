"""OpenCLIP towers other than the plain ViT: ResNet CLIPs (OpenAI / OpenCLIP RN50...) and timm-trunk towers
(SigLIP, EVA-CLIP), built with open_clip's own classes.

ResNet CLIP (`visual.layer1.*`, `visual.attnpool.*`; open_clip's ModifiedResNet): the config comes from shapes
as in open_clip's `build_model_from_openai_state_dict`; the attention pool's head count is not in the tensors
and follows open_clip's rule (width * 32 / 64). Tokens = layer4's feature map flattened row-major (before
`attnpool`), no prefix tokens. `map` = the model's own `attnpool` (= `encode_image` before normalization); its
patch scores use the patches' value embeddings `c_proj(v_proj(x_i + pos_i))` (each patch attending only to
itself: MaskCLIP's dense features, Zhou et al., ECCV 2022), which live in the pooled token's space.
`project` for gap / last is the same value path at the mean positional embedding, so `project(gap)` is exactly
the mean of the patch value embeddings.

timm-trunk towers (`visual.trunk.*`): a trunk's architecture (rope, SwiGLU, class token or not) cannot be
read safely from shapes, so its open_clip model config is required: the hub name (`openclip:ARCH/TAG`), the
`open_clip_config.json` open_clip's `save_for_hf` writes next to the weights, or an OpenCLIP training run
name (`model_<ARCH>`). The strict load then checks every tensor against that config. Tokens =
`trunk.forward_features` (after its final norm); `map` = the trunk's attention-pool head (SigLIP);
`project` = the rest of open_clip's image head (`fc_norm`, the trunk head, `visual.head`).

`--image-size N`: a timm trunk is resized by timm's own `set_input_size` (position embeddings resampled,
EVA's rotary grid rebuilt); a ResNet CLIP is refused (its attention pool's position embeddings are fixed and
open_clip has no resampling for them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.transform import CLIP_MEAN, CLIP_STD, TransformSpec, open_clip_resize_mode
from ..errors import InputError
from ..pooling import Pooled
from . import openclip_vit
from .base import ArchSpec, Backbone, KeyReport, LoadedModel, LoadOptions
from .keys import drop_keys, strict_load, to_float32
from .openclip_vit import _count, _need, clip_kwargs, quick_gelu_rule, text_config, unwrap_any

FAMILY = "openclip"
HF_CONFIG = "open_clip_config.json"  # open_clip's HF_CONFIG_NAME
RN_STRIDE = 32
RN_HEAD_WIDTH = 64  # open_clip CLIPVisionCfg.head_width default: attnpool heads = width * 32 // 64


def detect(raw, opts: LoadOptions | None = None) -> bool:
    found = unwrap_any(raw, opts)
    return found is not None and _kind(found[0]) is not None


def _kind(sd: dict) -> str | None:
    if "visual.attnpool.positional_embedding" in sd and any(k.startswith("visual.layer1.") for k in sd):
        return "resnet"
    if any(k.startswith("visual.trunk.") for k in sd):
        return "timm"
    return None


def _rn_spatial(model) -> tuple[int, torch.Tensor]:
    pos = model.visual.attnpool.positional_embedding
    return math.isqrt(pos.shape[0] - 1), pos


class CLIPResNetBackbone(Backbone):
    """ModifiedResNet: layer4 tokens, `attnpool` as the map head, its value path as the projection."""

    has_map_head = True

    def __init__(self, model, details: dict) -> None:
        super().__init__()
        self.clip = model
        self.details = details
        self.num_prefix_tokens = 0

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        v = self.clip.visual
        x = v.stem(x.to(v.conv1.weight.dtype))
        x = v.layer4(v.layer3(v.layer2(v.layer1(x))))
        return x.flatten(2).transpose(1, 2)

    def _values(self, x: torch.Tensor) -> torch.Tensor:
        """The attention pool's value path c_proj(v_proj(x)) for inputs that already carry a position."""
        ap = self.clip.visual.attnpool
        return ap.c_proj(F.linear(x, ap.v_proj.weight, ap.v_proj.bias))

    def map_pool(self, tokens: torch.Tensor) -> Pooled:
        b, n, c = tokens.shape
        g = math.isqrt(n)
        ap = self.clip.visual.attnpool
        token = ap(tokens.transpose(1, 2).reshape(b, c, g, g))
        patches = self._values(tokens + ap.positional_embedding[1:].to(tokens.dtype))
        return Pooled(token=token.float(), patches=patches.float(), projected=True)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        pos = self.clip.visual.attnpool.positional_embedding[1:].mean(dim=0)
        return self._values(pooled + pos.to(pooled.dtype))


class TimmTowerBackbone(Backbone):
    """open_clip's TimmModel: trunk tokens; map = the trunk's attention pool; project = the rest of the head."""

    def __init__(self, model, details: dict) -> None:
        super().__init__()
        self.clip = model
        self.details = details
        trunk = model.visual.trunk
        self.num_prefix_tokens = int(getattr(trunk, "num_prefix_tokens", 1))
        self.has_map_head = getattr(trunk, "attn_pool", None) is not None

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip.visual.trunk.forward_features(x)

    def map_pool(self, tokens: torch.Tensor) -> Pooled | None:
        if not self.has_map_head:
            return None
        from .dino_vit import timm_attn_pool

        return Pooled(token=timm_attn_pool(self.clip.visual.trunk, tokens).float())

    def blocks(self) -> list[torch.nn.Module]:
        """A timm ViT (SigLIP) or Eva (EVA-CLIP) trunk's blocks; `engine/internals` reads keys only from the
        attention modules it recomputes exactly (EVA's rotary embeddings and q / v biases included)."""
        from timm.models.eva import Eva
        from timm.models.vision_transformer import VisionTransformer

        trunk = self.clip.visual.trunk
        return list(trunk.blocks) if type(trunk) in (VisionTransformer, Eva) else []

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        v = self.clip.visual
        t = v.trunk
        return v.head(t.head(t.head_drop(t.fc_norm(pooled))))


def _model_config(raw, source: str, hints: dict, given: dict | None) -> tuple[dict, str, dict]:
    """(open_clip model config, where it came from, preprocess config) for a timm-trunk tower."""
    if given is not None:
        return given, "library config", {}
    side = Path(source).with_name(HF_CONFIG)
    if side.is_file():
        try:
            doc = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"{side}: cannot read open_clip config ({type(e).__name__}: {e})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("model_cfg"), dict):
            raise InputError(f"{side}: no 'model_cfg' object (expected open_clip's save_for_hf layout)")
        return doc["model_cfg"], str(side), doc.get("preprocess_cfg") or {}
    name = hints.get("training_name")
    if name:
        import re

        import open_clip

        m = re.search(r"(?:^|-)model_(.+?)(?:-lr_|$)", name)
        cfg = open_clip.get_model_config(m.group(1)) if m else None
        if cfg:
            return cfg, f"run name model {m.group(1)!r} (OpenCLIP)", {}
    raise InputError(f"{source}: an open_clip timm-trunk tower (visual.trunk.*) needs its model config: put the "
                     f"{HF_CONFIG} open_clip saves with it next to the file, or load it as openclip:ARCH/TAG")


def _build(cfg: dict, quick_gelu: bool):
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = dict(cfg)
    custom = bool(cfg.pop("custom_text", False)) or "hf_model_name" in (cfg.get("text_cfg") or {})
    vision = dict(cfg.get("vision_cfg") or {})
    vision["timm_model_pretrained"] = False  # never a download: the file holds the weights
    cfg["vision_cfg"] = vision
    text = cfg.get("text_cfg") or {}
    if "hf_model_name" in text:
        raise InputError(f"text tower {text['hf_model_name']!r} is a Hugging Face model, not supported")
    cls = CustomTextCLIP if custom else CLIP
    return cls(**cfg, quick_gelu=quick_gelu)


def load(raw, opts: LoadOptions, source: str, sha256: str | None, model_cfg: dict | None = None,
         cfg_where: str | None = None, hint=None) -> LoadedModel:
    """`model_cfg`: open_clip's config for the hub name (timm towers), else found beside / inside the file.
    A plain ViT CLIP goes to `openclip_vit` (with `hint`), so one family name serves every CLIP tower."""
    found = unwrap_any(raw, opts)
    if found is None or _kind(found[0]) is None:
        return openclip_vit.load(raw, opts, source, sha256, hint=hint)
    sd, report, hints = found
    sd, ignored = drop_keys(sd, opts.ignore_keys)
    report.ignored = ignored
    sd = to_float32(sd)
    quick_gelu, why = quick_gelu_rule(opts, hints)
    report.steps.append(f"activation: {'QuickGELU' if quick_gelu else 'GELU'} ({why})")
    if _kind(sd) == "resnet":
        return _load_resnet(sd, report, opts, source, sha256, quick_gelu)
    return _load_timm(raw, sd, report, hints, source, sha256, quick_gelu, model_cfg, cfg_where, opts.image_size)


def _load_resnet(sd: dict, report: KeyReport, opts: LoadOptions, source: str, sha256: str | None,
                 quick_gelu: bool) -> LoadedModel:
    if opts.num_heads is not None:
        raise InputError(f"{source}: --num-heads does not apply to a ResNet CLIP (attnpool heads follow open_clip)")
    from open_clip.model import CLIP, CLIPVisionCfg

    layers = [_count(sd, f"visual.layer{i}.") for i in (1, 2, 3, 4)]
    width = int(_need(sd, "visual.layer1.0.conv1.weight", source).shape[0])
    spatial = math.isqrt(sd["visual.attnpool.positional_embedding"].shape[0] - 1)
    embed_dim = int(_need(sd, "visual.attnpool.c_proj.weight", source).shape[0])
    if opts.image_size and opts.image_size != spatial * RN_STRIDE:
        raise InputError(f"{source}: --image-size {opts.image_size} does not apply to a CLIP ResNet (layers {layers}): "
                         f"open_clip's attention pool has position embeddings for {spatial * RN_STRIDE} px only and "
                         "open_clip never resamples them; drop --image-size")
    vision = CLIPVisionCfg(layers=layers, width=width, head_width=RN_HEAD_WIDTH, image_size=spatial * RN_STRIDE)
    model = CLIP(embed_dim, vision_cfg=vision, text_cfg=text_config(sd, source), quick_gelu=quick_gelu,
                 **clip_kwargs(sd))
    name = {(3, 4, 6, 3): "RN50", (3, 4, 23, 3): "RN101"}.get(tuple(layers), "RN-" + "-".join(map(str, layers)))
    if width != 64:
        name += f"x{width // 64}" if width % 64 == 0 else f"-w{width}"
    arch = ArchSpec(family=FAMILY, name=name, image_size=spatial * RN_STRIDE, patch_size=RN_STRIDE,
                    width=width * 32, depth=sum(layers), heads=width * 32 // RN_HEAD_WIDTH, mlp_dim=0,
                    num_prefix_tokens=0, num_classes=None, embed_dim=embed_dim,
                    heads_source="library config (open_clip: attnpool heads = width * 32 / 64)",
                    config=f"open_clip ModifiedResNet(layers={layers}, width={width})")
    strict_load(model, sd, source, report, arch)
    model.eval().requires_grad_(False)
    details = {"quick_gelu": quick_gelu, "tower": "resnet"}
    return LoadedModel(backbone=CLIPResNetBackbone(model, details), arch=arch,
                       transform=TransformSpec(resize=arch.image_size, crop=arch.image_size, interpolation="bicubic",
                                               mean=CLIP_MEAN, std=CLIP_STD),
                       keys=report, source=source, sha256=sha256, params=sum(p.numel() for p in model.parameters()))


def _load_timm(raw, sd: dict, report: KeyReport, hints: dict, source: str, sha256: str | None, quick_gelu: bool,
               model_cfg: dict | None, cfg_where: str | None, image_size: int | None = None) -> LoadedModel:
    cfg, where, pre = _model_config(raw, source, hints, model_cfg)
    where = cfg_where or where
    try:
        model = _build(cfg, quick_gelu)
    except InputError as e:
        raise InputError(f"{source}: {e}") from None
    except Exception as e:  # noqa: BLE001 - an unknown timm name or a malformed config: one line, naming it
        first = (str(e).strip().splitlines() or [""])[0]
        raise InputError(f"{source}: open_clip cannot build the config from {where} ({type(e).__name__}: {first})"
                         ) from None
    report.steps.append(f"open_clip config from {where}")
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        from open_clip.model import convert_to_custom_text_state_dict

        sd = convert_to_custom_text_state_dict(sd)
        report.steps.append("moved text tower keys under 'text.' (open_clip's custom-text layout)")
    trunk = model.visual.trunk
    pe = trunk.patch_embed
    native = int(pe.img_size[0])
    if image_size:
        from .resolution import check_image_size

        check_image_size(image_size, int(pe.patch_size[0]), source)
    blk = trunk.blocks[0]
    mlp = getattr(blk.mlp, "fc1", None) or getattr(blk.mlp, "fc1_x", None)
    vcfg = cfg.get("vision_cfg") or {}
    patch = int(pe.patch_size[0])
    size = image_size or native
    arch = ArchSpec(family=FAMILY, name=str(vcfg.get("timm_model_name")), image_size=size, patch_size=patch,
                    width=int(trunk.embed_dim), depth=len(trunk.blocks), heads=int(blk.attn.num_heads),
                    mlp_dim=int(mlp.out_features) if mlp is not None else 0,
                    num_prefix_tokens=int(getattr(trunk, "num_prefix_tokens", 1)), num_classes=None,
                    embed_dim=int(cfg["embed_dim"]), heads_source="library config",
                    config=f"open_clip {where}: timm {vcfg.get('timm_model_name')}, pool {vcfg.get('timm_pool')}",
                    native_image_size=native if native != size else None)
    strict_load(model, sd, source, report, arch)
    if size != native:  # --image-size: the trunk's own set_input_size (pos_embed resampled, rope grid rebuilt)
        from .resolution import timm_set_size

        report.steps += timm_set_size(trunk, size, source)
    model.eval().requires_grad_(False)
    text = cfg.get("text_cfg") or {}
    details = {"quick_gelu": quick_gelu, "tower": "timm", "tokenizer": text.get("hf_tokenizer_name")}
    transform = TransformSpec(resize=arch.image_size, crop=arch.image_size,
                              interpolation=pre.get("interpolation", "bicubic"),
                              mean=tuple(pre.get("mean", CLIP_MEAN)), std=tuple(pre.get("std", CLIP_STD)))
    mode = pre.get("resize_mode")
    transform = open_clip_resize_mode(transform, mode, where)
    if transform.kind != "resize-crop":  # a step only then: store keys of 'shortest' towers unchanged
        report.steps.append(f"preprocessing: open_clip resize_mode={mode!r} from {where} ({transform.kind})")
    return LoadedModel(backbone=TimmTowerBackbone(model, details), arch=arch, transform=transform, keys=report,
                       source=source, sha256=sha256, params=sum(p.numel() for p in model.parameters()))
