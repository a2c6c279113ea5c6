"""`lastvit-eval inspect`: what a checkpoint is and how it will be loaded, before any evaluation."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from ..app import app
from . import options as o

if TYPE_CHECKING:  # models/ imports torch: only inside the command, so `--help` stays instant
    from ..models import LoadedModel
    from ..models.base import ArchSpec, KeyReport, LoadError


def _keys(k: KeyReport) -> dict:
    return {
        "format": k.format,
        "key_mapping": list(k.steps),
        "dropped": list(k.dropped),
        "ignored": list(k.ignored),
        "missing": list(k.missing),
        "unexpected": list(k.unexpected),
        "mismatched": list(k.mismatched),
    }


def describe_failure(source: str, err: LoadError) -> dict:
    """What a failed load still knows (key report, inferred architecture), next to the error."""
    info: dict = {"source": source, "error": str(err)}
    if err.arch is not None:
        info["family"] = err.arch.family
        info["arch"] = err.arch.to_dict()
    if err.keys is not None:
        info.update(_keys(err.keys))
    return info


def describe(model: LoadedModel) -> dict:
    """Everything a user needs to trust the load: family, shapes, key mapping, transform, hash."""
    k = model.keys
    return {
        "source": model.source,
        "sha256": model.sha256,
        "family": model.arch.family,
        "arch": model.arch.to_dict(),
        "params": model.params,
        **_keys(k),
        "transform": model.transform.to_dict(),
        "details": getattr(model.backbone, "details", {}),
    }


@app.command("inspect")
def inspect_cmd(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file or hub name (torchvision:vit_b_16, timm:NAME, "
                                              "openclip:ARCH/TAG).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts).")] = False,
    trust_checkpoint: o.TrustCheckpoint = False, ignore_keys: o.IgnoreKeys = None, num_heads: o.NumHeads = None,
    checkpoint_key: o.CheckpointKey = None, family: o.Family = None, quick_gelu: o.QuickGelu = None,
    arch: o.Arch = None, image_size: o.ImageSize = None,
) -> None:
    """Load a checkpoint strictly and report family, architecture, key mapping and preprocessing.

    A load that fails after the keys were mapped still prints what it found (missing / unexpected keys) before
    the one-line error and exit code 2.
    """
    from ..models import LoadOptions, load_model
    from ..models.base import LoadError

    load = LoadOptions(trust=trust_checkpoint, ignore_keys=tuple(ignore_keys or ()), num_heads=num_heads,
                       checkpoint_key=checkpoint_key, family=family, quick_gelu=quick_gelu, arch=arch,
                       image_size=image_size)
    try:
        model = load_model(checkpoint, load)
    except LoadError as e:
        info = describe_failure(checkpoint, e)
        if as_json:
            typer.echo(json.dumps(info, indent=2))
        else:
            _print_table(checkpoint, _key_rows(info, e.arch))
        raise
    info = describe(model)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    a = model.arch
    t = model.transform
    rows = [
        *_key_rows(info, a)[:2],
        ("head", f"{a.num_classes} classes" if a.num_classes else "none"),
        ("projection", f"{a.embed_dim}-d" if a.embed_dim else "none"),
        ("parameters", f"{model.params:,}"),
        *_key_rows(info, a)[2:],
        ("transform", (f"squash to {t.crop}x{t.crop} {t.interpolation}" if t.kind == "squash" else
                       f"resize {t.resize} {t.interpolation}, crop {t.crop}") + f", mean {t.mean}, std {t.std}"),
        ("sha256", model.sha256 or "n/a"),
    ]
    for key, value in info["details"].items():
        rows.append((key, json.dumps(value)))
    _print_table(model.name, rows)


def _heads(a: ArchSpec) -> str:
    where = f" ({a.heads_source}{': ' + a.config if a.config else ''})"
    if a.heads_source == "assumed from width":
        where = " (assumed from width: the file carries no config; pass --num-heads if it is non-standard)"
    return f"{a.heads}{where}"


def _size(a: ArchSpec) -> str:
    native = getattr(a, "native_image_size", None)
    return f"{a.image_size}px" + (f" (position embeddings trained at {native}px, interpolated)" if native else "")


def _prefix(a: ArchSpec) -> str:
    """CLS, registers and other prefix tokens (DeiT's distillation token): pooling skips all of them."""
    regs = getattr(a, "num_registers", 0)
    cls = 1 if a.num_prefix_tokens > regs else 0
    other = a.num_prefix_tokens - cls - regs
    parts = (["CLS"] if cls else ["no CLS"]) + ([f"{regs} registers"] if regs else []) + (
        [f"{other} other (e.g. distillation)"] if other > 0 else [])
    return f"{a.num_prefix_tokens} ({' + '.join(parts)})" if len(parts) > 1 else str(a.num_prefix_tokens)


def _key_rows(info: dict, a: ArchSpec | None) -> list[tuple[str, str]]:
    rows = []
    if a is not None:
        rows += [("family", a.family),
                 ("architecture", f"{a.name}: {_size(a)}, patch {a.patch_size}, width {a.width}, depth "
                                  f"{a.depth}, heads {_heads(a)}, mlp {a.mlp_dim}, prefix tokens {_prefix(a)}")]
    if "format" in info:
        rows += [
            ("format", info["format"]),
            ("key mapping", "\n".join(info["key_mapping"]) or "none"),
            ("dropped keys", _short(info["dropped"])),
            ("ignored keys", _short(info["ignored"])),
            ("missing / unexpected", f"{_short(info['missing'])} / {_short(info['unexpected'])}"),
        ]
        if info["mismatched"]:
            rows.append(("shape mismatches", _short(info["mismatched"], 3)))
    return rows


def _print_table(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.table import Table

    from ..report.console import console

    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for r in rows:
        table.add_row(*r)
    console.print(table)


def _short(keys: list[str], n: int = 6) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} total)" if len(keys) > n else "")
