"""`lastvit-eval cache ls|clear`: what the feature store holds, by model and tap; prune by model or age."""

from __future__ import annotations

from typing import Annotated

import typer

from ..app import _Typer, app
from . import options as o

cache_app = _Typer(help="Inspect and prune the feature store (per model space: one column per tap and pooling).",
                   no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(cache_app, name="cache")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@cache_app.command("ls")
def ls(cache_dir: o.CacheDir = None) -> None:
    """One row per model space and tap: images stored, shards, size, last written (fits 100 columns)."""
    import datetime as dt
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from ..engine.store import StoreSpec, list_columns

    root = StoreSpec(dir=cache_dir).root
    cols = list_columns(root)
    console = Console(width=100, stderr=False)
    if not cols:
        console.print(f"no features stored under {root}")
        return
    table = Table(title=f"feature store {root}", title_justify="left", width=100)
    table.add_column("space", no_wrap=True)
    table.add_column("model", overflow="ellipsis", no_wrap=True, max_width=28)
    table.add_column("tap / pooling", overflow="ellipsis", no_wrap=True, max_width=24)
    for name in ("images", "size", "updated"):
        table.add_column(name, justify="right", no_wrap=True)
    for c in cols:
        table.add_row(c.space[:8], Path(c.model).name, c.tap, str(c.images), _size(c.bytes),
                      dt.datetime.fromtimestamp(c.updated).strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@cache_app.command("clear")
def clear(
    model: Annotated[str | None, typer.Option("--model", help="Delete the spaces of this checkpoint (file name or "
                                              "sha256 prefix of 6+ characters).")] = None,
    older_than: Annotated[float | None, typer.Option("--older-than", help="Delete spaces not written for this "
                                                     "many days.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Delete everything.")] = False,
    cache_dir: o.CacheDir = None,
) -> None:
    """Delete stored features by model, by age, or all of them."""
    from ..engine.store import StoreSpec, clear_spaces
    from ..errors import InputError
    from ..report.console import console

    if not (all_ or model or older_than is not None):
        raise InputError("cache clear: give --model, --older-than or --all")
    if all_ and (model or older_than is not None):
        raise InputError("cache clear: --all goes alone")
    root = StoreSpec(dir=cache_dir).root
    removed = clear_spaces(root, model=model, older_than_days=older_than, everything=all_)
    console.print(f"removed {len(removed)} model space{'' if len(removed) == 1 else 's'} from {root}")
