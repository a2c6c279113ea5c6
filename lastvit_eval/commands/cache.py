"""`lastvit-eval cache ls|clear`: inspect and prune the feature cache."""

from __future__ import annotations

from typing import Annotated

import typer

from ..app import _Typer, app
from . import options as o

cache_app = _Typer(help="Inspect and prune the feature cache (one entry per checkpoint x data x taps).",
                   no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(cache_app, name="cache")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@cache_app.command("ls")
def ls(cache_dir: o.CacheDir = None) -> None:
    """List cache entries: key, checkpoint, dataset, taps, shards done/total, size, created."""
    from rich.table import Table

    from ..engine.cache import CacheSpec, list_entries
    from ..report.console import console

    root = CacheSpec(dir=cache_dir).root
    entries = list_entries(root)
    if not entries:
        console.print(f"no cache entries under {root}")
        return
    table = Table(title=f"feature cache {root}", title_justify="left")
    for col in ("key", "checkpoint", "dataset", "taps", "shards", "size", "created"):
        fixed = col in ("key", "shards", "size")
        table.add_column(col, justify="right" if col in ("shards", "size") else "left", overflow="fold",
                         no_wrap=fixed, min_width=16 if col == "key" else None)
    for e in entries:
        table.add_row(e.key[:16], e.checkpoint, e.dataset, e.taps, f"{e.shards_done}/{e.shards_total}",
                      _size(e.bytes), e.created)
    console.print(table)


@cache_app.command("clear")
def clear(
    keys: Annotated[list[str] | None, typer.Argument(help="Entry keys (unique prefixes) to delete.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Delete every entry.")] = False,
    cache_dir: o.CacheDir = None,
) -> None:
    """Delete the given entries, or all of them with --all."""
    from ..engine.cache import CacheSpec
    from ..engine.cache import clear as clear_entries
    from ..errors import InputError
    from ..report.console import console

    root = CacheSpec(dir=cache_dir).root
    if all_ == bool(keys):
        raise InputError("cache clear: give entry keys or --all (not both)")
    removed = clear_entries(root, None if all_ else list(keys or []))
    console.print(f"removed {len(removed)} cache entr{'y' if len(removed) == 1 else 'ies'} from {root}")
