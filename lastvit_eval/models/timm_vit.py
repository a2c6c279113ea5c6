"""Any timm VisionTransformer or Eva from a file: a timm checkpoint naming its architecture, or `--arch NAME`.

Forms: timm's train.py checkpoints (`{'arch', 'state_dict', 'state_dict_ema', ...}`), files carrying a
`pretrained_cfg` (`architecture`), and plain state dicts with `--arch NAME` (DeiT with its distillation token,
MAE, EVA02, DINOv2 in timm's or facebookresearch/dinov2's layout, ...). The model is
`timm.create_model(NAME, pretrained=False, num_classes=<head rows>)` at the grid the file's `pos_embed` was
trained for, then a strict load with a key report; `--image-size` resamples with timm's `set_input_size`.

Which tokens and pools (recorded in the backbone's `details`): tokens are timm's `forward_features`. For
models that pool with the class token (`global_pool='token'`: ViT, DeiT, MAE pre-trained, DINOv2) these are
the final normalized tokens; prefix tokens (CLS, registers, DeiT's distillation token) are skipped by GAP and
LAST. Models whose own pooling is `avg` with `fc_norm` (EVA02, MAE / BEiT fine-tuned) have no final norm on
the tokens (timm's `norm` is Identity; `fc_norm` is applied after pooling): `gap` then is exactly the model's
own pooled feature before `fc_norm`, the head applies `fc_norm` (so `gap` + head = the model's own logits), and
`cls` / `last` see the un-normalized last-block tokens. DeiT distilled: the head is the class-token
classifier `head` (timm averages it with `head_dist` on the distillation token at inference).

MAE (facebookresearch/mae, `{'model': state_dict}`): a pre-training checkpoint (encoder plus `mask_token` and
`decoder_*`) has its decoder and mask token dropped and listed in the key report, as DINO's projection head is;
the released encoder (MAE's fixed 2-D sin-cos `pos_embed` with a zero CLS row, which no learned embedding
reproduces) is recognised by that table. Both need `--arch` (e.g. vit_base_patch16_224: MAE's encoders are
timm ViTs) and get MAE's own evaluation transform (resize 256 bicubic, crop 224, ImageNet mean / std, scaled
for `--image-size`). A fine-tuned MAE (`fc_norm` without `norm`: global_pool avg) is built with timm's
`global_pool='avg'`, which gives exactly that layout.

Without a name, or with one whose shapes disagree, the error lists the timm names that fit the tensors:
every `vit_*` / `deit*` / `eva*` name with the file's patch size is built on the meta device with one block
(no memory, about 10 ms each) and compared shape by shape, then the survivors at full depth.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..data.transform import TransformSpec
from ..errors import InputError
from .base import ArchSpec, KeyReport, LoadedModel, LoadError, LoadOptions
from .dino_vit import TimmBackbone
from .keys import drop_keys, is_state_dict, strict_load, strip_if_all, take_wrapper, to_float32
from .resolution import check_image_size, timm_set_size

FAMILY = "timm"
PATTERNS = ("vit_*", "deit*", "eva*")
# Keys only timm-built models have (a DINO-style VisionTransformer cannot hold them): distillation token,
# fc_norm without a final norm (avg pooling), EVA's split q/v biases, SwiGLU and rotary tensors, an attention-pool head.
TIMM_ONLY = ("dist_token", "head_dist.weight", "blocks.0.attn.q_bias", "blocks.0.mlp.fc1_g.weight",
             "blocks.0.attn.q_proj.weight", "attn_pool.latent")


def mae_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """MAE's fixed position table (util/pos_embed.py get_2d_sincos_pos_embed, cls_token=True), [1 + grid^2, dim]:
    a zero CLS row, then per patch (row i, column j) [sin(j w), cos(j w), sin(i w), cos(i w)], w = 1/10000^(4k/dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))
    idx = torch.arange(grid, dtype=torch.float64)

    def enc(pos: torch.Tensor) -> torch.Tensor:
        out = pos[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    patches = torch.cat([enc(idx.repeat(grid)), enc(idx.repeat_interleave(grid))], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), patches], dim=0)


def mae_kind(sd: dict) -> str | None:
    """'pretrain' (MAE's decoder is in the file), 'encoder' (MAE's sin-cos pos_embed), or None."""
    if any(k.startswith("decoder_") for k in sd) and "patch_embed.proj.weight" in sd:
        return "pretrain"
    pos = sd.get("pos_embed")
    if not isinstance(pos, torch.Tensor) or pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] % 4:
        return None
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    if grid * grid != pos.shape[1] - 1 or bool(pos[0, 0].any()):
        return None
    return "encoder" if (pos[0].double() - mae_pos_embed(pos.shape[2], grid)).abs().max() < 1e-3 else None


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


# facebookresearch/mae names its models `mae_vit_<size>_patch<p>` (models_mae.py, pre-training) and
# `vit_<size>_patch<p>` (models_vit.py, fine-tuning); both encoders are timm's `vit_<size>_patch<p>_224`.
_MAE_NAME = re.compile(r"^(?:mae_)?vit_(tiny|small|base|large|huge)_patch(\d+)$")


def mae_to_timm(name: str) -> str | None:
    """timm's name for an MAE model name from a checkpoint's `args.model`, or None when it is not one."""
    m = _MAE_NAME.match(name)
    return f"vit_{m.group(1)}_patch{m.group(2)}_224" if m else None


def file_arch(raw) -> tuple[str, str] | None:
    """(timm name, where it was read) from a checkpoint's own config, if it carries one."""
    if not isinstance(raw, dict):
        return None
    args = raw.get("args")
    for where, name in (("checkpoint['arch']", raw.get("arch")),
                        ("pretrained_cfg['architecture']", _field(raw.get("pretrained_cfg") or {}, "architecture")),
                        ("args.model", _field(args, "model") if args is not None else None)):
        if isinstance(name, str) and name:
            timm_name = mae_to_timm(name) if where == "args.model" else None
            if timm_name:
                return timm_name, f"args.model {name!r} (MAE's name for timm's {timm_name})"
            return name, where
    return None


def unwrap(raw, opts: LoadOptions | None = None) -> tuple[dict, KeyReport] | None:
    """The model tensors in timm's layout (DINOv2's own layout mapped as the dinov2 family does)."""
    opts = opts or LoadOptions()
    report = KeyReport(format="timm state_dict")
    keys = ((opts.checkpoint_key,) if opts.checkpoint_key else ()) + ("state_dict", "model")
    obj = take_wrapper(raw, keys, report, label="timm checkpoint ")
    if not is_state_dict(obj):
        return None
    sd = strip_if_all(dict(obj), "module.", report.steps)
    from . import dinov2

    mae = mae_kind(sd)
    if mae:
        wrapper = report.format.removeprefix("timm checkpoint ")
        report.format = f"MAE {mae} checkpoint " + ("state_dict" if wrapper == "timm state_dict" else wrapper)
    if mae == "pretrain":
        drop = sorted(k for k in sd if k.startswith("decoder_") or k == "mask_token")
        sd = {k: v for k, v in sd.items() if k not in drop}
        report.dropped.extend(drop)
        report.steps.append(f"dropped {len(drop)} MAE pre-training keys (decoder_*, mask_token): not the encoder")
    elif "patch_embed.proj.weight" in sd and dinov2.unwrap(sd) is not None:
        if dinov2.is_chunked(sd):
            sd = dinov2.unchunk_blocks(sd)
            report.steps.append("block chunks blocks.<chunk>.<i>.* -> blocks.<i>.*")
        sd, dropped = dinov2.to_timm(sd)
        report.dropped.extend(dropped)
        report.steps.append("DINOv2 layout -> timm layout (mask_token dropped, register_tokens -> reg_token)")
    if "patch_embed.proj.weight" not in sd:
        return None
    return sd, report


def detect(raw) -> bool:
    """Files that name a timm architecture in `pretrained_cfg`, or hold tensors only timm models have.

    Plain ViT state dicts with a train.py `arch` stay with the DINO adapter (same layout, same result).
    """
    found = unwrap(raw)
    if found is None:
        return False
    sd = found[0]
    pretrained_cfg = isinstance(raw, dict) and isinstance(raw.get("pretrained_cfg"), dict)
    return (pretrained_cfg or any(k in sd for k in TIMM_ONLY) or ("fc_norm.weight" in sd and "norm.weight" not in sd)
            or found[1].format.startswith("MAE"))


def _layout_kw(sd: dict) -> dict:
    """The pooling layout the tensors fix: `attn_pool.*` (an attention-pool head) is timm's global_pool='map';
    `fc_norm` without `norm` (MAE / BEiT fine-tuned, EVA02) is global_pool='avg'."""
    if any(k.startswith("attn_pool.") for k in sd):
        return {"global_pool": "map"}
    return {"global_pool": "avg"} if "fc_norm.weight" in sd and "norm.weight" not in sd else {}


def _num_classes(sd: dict) -> int:
    w = sd.get("head.weight")
    return int(w.shape[0]) if w is not None and w.ndim == 2 else 0


def _create(name: str, sd: dict, meta: bool, **kw):
    import timm

    kw = {**_layout_kw(sd), **kw}
    if meta:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, num_classes=_num_classes(sd), **kw)
    return timm.create_model(name, pretrained=False, num_classes=_num_classes(sd), **kw)


def _shape_facts(sd: dict) -> str:
    w = sd["patch_embed.proj.weight"]
    depth = len({m.group(1) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    pos = sd.get("pos_embed")
    return (f"patch_embed.proj.weight {tuple(w.shape)}, pos_embed {tuple(pos.shape) if pos is not None else None}, "
            f"depth {depth}")


def _signature(sd: dict) -> dict:
    """Shapes that fix an architecture: everything but later blocks and the position grid."""
    return {k: tuple(v.shape) for k, v in sd.items() if k != "pos_embed" and not re.match(r"blocks\.[1-9]\d*\.", k)}


_FITS: dict = {}  # signature -> names: one search per architecture and process


def fitting_names(sd: dict, limit: int = 8) -> list[str]:
    """timm names whose architecture holds exactly these tensors (meta-device builds; used on the error path)."""
    depth = len({m.group(1) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    want = _signature(sd)
    key = (depth, _num_classes(sd), tuple(sorted(want.items())))
    if key not in _FITS:
        _FITS[key] = _search(sd, want, depth, limit)
    return _FITS[key]


def _search(sd: dict, want: dict, depth: int, limit: int) -> list[str]:
    import timm

    patch = sd["patch_embed.proj.weight"].shape[-1]
    fits = []
    for name in timm.list_models(list(PATTERNS)):
        if not re.search(rf"patch{patch}(?!\d)", name):
            continue
        try:
            one = _create(name, sd, meta=True, depth=1)
        except Exception:  # noqa: BLE001 - some entrypoints refuse depth=1 or need extra files
            continue
        if _signature(one.state_dict()) != want:
            continue
        try:
            full = _create(name, sd, meta=True)
        except Exception:  # noqa: BLE001
            continue
        if len(full.blocks) == depth:
            fits.append(name)
            if len(fits) >= limit:
                break
    return fits


def _fits_text(sd: dict) -> str:
    names = fitting_names(sd)
    if names:
        return f"timm names that fit: {', '.join(names)}"
    return f"no timm {'/'.join(PATTERNS)} model fits these shapes"


def _grid_size(model, sd: dict) -> int | None:
    """Image size the file's pos_embed was trained for, on this architecture's prefix layout."""
    pos = sd.get("pos_embed")
    if pos is None or getattr(model, "pos_embed", None) is None:
        return None
    prefix = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
    n = pos.shape[1] - prefix
    g = int(round(max(n, 0) ** 0.5))
    return g * int(model.patch_embed.patch_size[0]) if g * g == n and n > 0 else None


def mlp_hidden(block) -> int:
    for m in block.mlp.modules():
        if isinstance(m, torch.nn.Linear):
            return int(m.out_features)
    return 0


def load(raw, opts: LoadOptions, source: str, sha256: str | None) -> LoadedModel:
    found = unwrap(raw, opts)
    if found is None:
        raise InputError(f"{source}: --arch / family timm needs a timm-layout ViT state dict (patch_embed.proj.weight "
                         "and friends); this file has none")
    sd, report = found
    sd, ignored = drop_keys(sd, opts.ignore_keys)
    report.ignored = ignored
    sd = to_float32(sd)
    named = (opts.arch, "--arch") if opts.arch else file_arch(raw)
    mae = report.format.startswith("MAE")
    if named is None:
        what = f"an {report.format.split(' checkpoint')[0]} checkpoint (MAE's encoders are timm ViTs)" if mae else ""
        raise InputError(f"{source}: {what + ': ' if mae else ''}the tensors ({_shape_facts(sd)}) do not say which "
                         f"timm architecture this is; pass --arch NAME ({_fits_text(sd)})")
    name, where = named
    import timm

    if not timm.is_model(name):
        raise InputError(f"{source}: {where} {name!r} is not a timm model; {_fits_text(sd)}")
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    probe = _create(name, sd, meta=True)
    if not isinstance(probe, (VisionTransformer, Eva)):
        raise InputError(f"{source}: {where} {name!r} builds a timm {type(probe).__name__}, not a VisionTransformer "
                         "or Eva")
    if opts.image_size:  # before building the real model
        check_image_size(opts.image_size, int(probe.patch_embed.patch_size[0]), source)
    native = _grid_size(probe, sd)
    kw = {"img_size": native} if native and native != probe.patch_embed.img_size[0] else {}
    model = _create(name, sd, meta=False, **kw)
    pool = _layout_kw(sd).get("global_pool")
    report.steps.append(f"timm.create_model({name!r}, pretrained=False, num_classes={_num_classes(sd)}"
                        + (f", img_size={native}" if kw else "")
                        + (f", global_pool={pool!r}" if pool else "") + f") ({where})"
                        + {"avg": " (fc_norm without norm: the avg-pooling layout)",
                           "map": " (attn_pool.* in the file: the attention-pool head)", None: ""}[pool])
    blk = model.blocks[0]
    heads = int(blk.attn.num_heads)
    width = int(model.embed_dim)
    patch = int(model.patch_embed.patch_size[0])
    if opts.num_heads is not None and opts.num_heads != heads:
        raise InputError(f"{source}: --num-heads {opts.num_heads} contradicts timm's config for {name!r} ({heads} "
                         f"heads of width {width // heads}; {_shape_facts(sd)}); drop --num-heads")
    reg = getattr(model, "reg_token", None)
    size = opts.image_size or int(model.patch_embed.img_size[0])
    arch = ArchSpec(family=FAMILY, name=name, image_size=size, patch_size=patch, width=width, depth=len(model.blocks),
                    heads=heads, mlp_dim=mlp_hidden(blk), num_prefix_tokens=int(model.num_prefix_tokens),
                    num_classes=model.num_classes or None, heads_source="library config",
                    config=f"timm {name} ({where})", num_registers=int(reg.shape[1]) if reg is not None else 0,
                    native_image_size=native if native and native != size else None)
    try:
        strict_load(model, sd, source, report, arch)
    except LoadError as e:
        if not (report.missing or report.unexpected or report.mismatched):
            raise  # a corrupt tensor, not a wrong name
        detail = str(e).removeprefix(f"{source}: ")
        raise LoadError(f"{source}: {where} {name!r} does not fit the tensors ({_shape_facts(sd)}; {_fits_text(sd)}): "
                        f"{detail}", keys=e.keys, arch=e.arch) from None
    report.steps += timm_set_size(model, size, source)
    model.eval().requires_grad_(False)
    backbone = TimmBackbone(model)
    backbone.details = pooling_details(model)
    if not mae:
        transform = timm_transform(model, size)
    else:  # MAE's own evaluation recipe, not the pretrained_cfg of whichever timm tag shares the architecture
        from ..data.transform import dino_vit

        transform = dino_vit(size)
        report.steps.append(f"preprocessing: MAE's evaluation transform (resize {transform.resize} bicubic, crop "
                            f"{size}, ImageNet mean/std)")
    return LoadedModel(backbone=backbone, arch=arch, transform=transform, keys=report,
                       source=source, sha256=sha256, params=sum(p.numel() for p in model.parameters()))


def pooling_details(model) -> dict:
    """How the model pools itself, and so what our tokens are (see the module docstring)."""
    fc_norm = not isinstance(getattr(model, "fc_norm", None), (torch.nn.Identity, type(None)))
    final_norm = not isinstance(getattr(model, "norm", None), (torch.nn.Identity, type(None)))
    return {"timm_global_pool": str(getattr(model, "global_pool", "")),
            "tokens": "after the final norm" if final_norm else "last block output (no final norm; fc_norm is "
            "applied after pooling)" if fc_norm else "last block output (no final norm)",
            "head": "fc_norm -> head" if fc_norm else "head"}


def timm_transform(model, size: int) -> TransformSpec:
    """timm's own eval transform for this model (its pretrained_cfg: crop_pct, interpolation, mean/std) at `size`."""
    import timm

    dc = timm.data.resolve_data_config({}, model=model)
    return TransformSpec(resize=int(size / dc["crop_pct"]), crop=size, interpolation=dc["interpolation"],
                         mean=tuple(dc["mean"]), std=tuple(dc["std"]))  # timm: scale_size = floor(size / crop_pct)
