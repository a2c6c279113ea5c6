"""Pure key-mapping helpers (state_dict -> state_dict), in the style of timm's checkpoint adapters."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .arch_config import STANDARD_HEADS, resolve_heads  # noqa: F401  (STANDARD_HEADS: re-exported)
from .base import ArchSpec, KeyReport, LoadError


def is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def strip_prefix(sd: dict, prefix: str) -> dict:
    """Remove `prefix` from every key that has it (all keys, or it is not applied)."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def all_have_prefix(sd: Mapping, prefix: str) -> bool:
    return len(sd) > 0 and all(k.startswith(prefix) for k in sd)


def strip_if_all(sd: dict, prefix: str, steps: list[str]) -> dict:
    """Strip `prefix` when every key has it (DDP's `module.`, detectron2's `model.`), noting the step."""
    if all_have_prefix(sd, prefix):
        steps.append(f"stripped prefix '{prefix}'")
        return strip_prefix(sd, prefix)
    return sd


# timm-style size names by width (ViT-Ti/S/B/L/H), used in architecture names.
SIZE_NAMES = {192: "ti", 384: "s", 768: "b", 1024: "l", 1280: "h"}


def take_wrapper(obj, wrappers: tuple[str, ...], report: KeyReport, label: str = ""):
    """The state dict under the first of `wrappers` that holds one (`checkpoint['model']`, ...), recorded in
    the report; `obj` itself when none does."""
    if isinstance(obj, dict):
        for w in wrappers:
            if w in obj and is_state_dict(obj[w]):
                report.format = f"{label}{{'{w}': ...}}"
                report.steps.append(f"took checkpoint['{w}']")
                return obj[w]
    return obj


def take_backbone(sd: dict, report: KeyReport) -> tuple[dict, bool]:
    """DINO's `backbone.*` keys with the prefix stripped; everything else (the projection head) dropped and
    listed in the report. (sd, False) when no key is under `backbone.`."""
    if not any(k.startswith("backbone.") for k in sd):
        return sd, False
    rest = sorted(k for k in sd if not k.startswith("backbone."))
    sd = select_prefix(sd, "backbone.")
    report.steps.append("took keys under 'backbone.' and stripped it")
    if rest:
        report.dropped = rest
        report.steps.append(f"dropped {len(rest)} non-backbone keys (DINO projection head)")
    return sd, True


def vit_name(width: int, patch: int) -> str:
    return f"vit_{SIZE_NAMES.get(width, f'w{width}')}_{patch}"


def select_prefix(sd: Mapping, prefix: str) -> dict:
    """Keys under `prefix`, with it removed."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def drop_keys(sd: dict, prefixes: tuple[str, ...]) -> tuple[dict, list[str]]:
    """Drop keys equal to or starting with any of `prefixes` (as given by --ignore-keys)."""
    if not prefixes:
        return sd, []
    kept, dropped = {}, []
    for k, v in sd.items():
        if any(k == p or k.startswith(p.rstrip(".") + ".") for p in prefixes):
            dropped.append(k)
        else:
            kept[k] = v
    return kept, dropped


def to_float32(sd: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def check_finite(sd: dict, source: str, report: KeyReport | None = None, arch: ArchSpec | None = None) -> None:
    """NaN / inf weights give plausible-looking metrics downstream, so they are a load error here."""
    for k, v in sd.items():
        if not (v.is_floating_point() or v.is_complex()) or bool(torch.isfinite(v.sum()).all()):
            continue  # a sum is non-finite if any element is (or on overflow: then the exact test below decides)
        if not bool(torch.isfinite(v).all()):
            nan, inf = int(torch.isnan(v).sum()), int(torch.isinf(v).sum())
            raise LoadError(f"{source}: tensor {k!r} {tuple(v.shape)} has non-finite values ({nan} NaN, {inf} inf "
                            f"of {v.numel()}); the checkpoint is corrupt", keys=report, arch=arch)


def strict_load(module: torch.nn.Module, sd: dict, source: str, report: KeyReport | None = None,
                arch: ArchSpec | None = None) -> tuple[list[str], list[str]]:
    """Load with every key accounted for: shape mismatches, missing and unexpected keys are errors.

    The missing / unexpected / mismatched keys go into `report` before any error, so a failed load can
    still be shown (`inspect`); non-finite weights are refused before they reach the module.
    """
    report = report if report is not None else KeyReport(format="state_dict")
    own = module.state_dict()
    report.mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs architecture {tuple(own[k].shape)}"
                         for k, v in sd.items() if k in own and own[k].shape != v.shape]
    report.missing = sorted(set(own) - set(sd))
    report.unexpected = sorted(set(sd) - set(own))
    if report.mismatched:
        first = next(k for k, v in sd.items() if k in own and own[k].shape != v.shape)
        raise LoadError(
            f"{source}: tensor {first!r} has shape {tuple(sd[first].shape)}, the architecture inferred from the "
            f"checkpoint expects {tuple(own[first].shape)}", keys=report, arch=arch)
    missing, unexpected = report.missing, report.unexpected
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        raise LoadError(
            f"{source}: checkpoint does not match the architecture ({'; '.join(parts)}); "
            "use --ignore-keys PREFIX to drop keys on purpose", keys=report, arch=arch)
    check_finite(sd, source, report, arch)
    module.load_state_dict(sd, strict=True)
    return missing, unexpected


def heads_for_width(width: int, override: int | None, source: str) -> int:
    """Heads with no config to check against (kept for callers outside the adapters)."""
    return resolve_heads(width, f"width {width}", 0, override, None, source)[0]
