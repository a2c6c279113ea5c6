"""Print a DataFrame as a Rich table: what a person sees at the end of a command."""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

STATUS_STYLE = {"FAIL": "bold red", "MISSING": "bold red", "NEW": "cyan", "PASS": "green"}


def rich_table(df: pd.DataFrame, title: str | None = None, floatfmt: str = ".2f",
               formats: dict[str, str] | None = None) -> Table:
    """Numbers right-aligned with `floatfmt` (or a per-column format), statuses coloured, markup escaped."""
    formats = formats or {}
    table = Table(title=title, show_lines=False)
    for col in df.columns:
        numeric = pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col])
        table.add_column(str(col), justify="right" if numeric else "left", overflow="fold")
    col_fmt = [formats.get(str(c), floatfmt) for c in df.columns]
    for row in df.itertuples(index=False):
        cells = []
        for v, fmt in zip(row, col_fmt, strict=True):
            if v is None or (isinstance(v, float) and pd.isna(v)) or v is pd.NA:
                cells.append("")
            elif isinstance(v, float):
                cells.append(format(v, fmt))
            else:
                s = str(v)
                style = STATUS_STYLE.get(s)
                cells.append(f"[{style}]{s}[/]" if style else escape(s))
        table.add_row(*cells)
    return table


def print_frame(df: pd.DataFrame, title: str | None = None, console: Console | None = None,
                formats: dict[str, str] | None = None) -> None:
    """Console is made per call so it writes to the current stdout (Typer's CliRunner swaps it)."""
    (console or Console()).print(rich_table(df, title=title, formats=formats))
