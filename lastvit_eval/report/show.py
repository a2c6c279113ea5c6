"""Print a DataFrame as a Rich table: what a person sees at the end of a command.

Console tables must read at 100 columns: numbers never split, wrap or get cut (only text folds), and
without a terminal Rich would wrap at 80, so consoles are made with an explicit width (100; the terminal's
own width on a TTY; `COLUMNS` when set). Files keep every column; consoles show what fits.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

STATUS_STYLE = {"FAIL": "bold red", "MISSING": "bold red", "NO-UNIT": "bold red", "NEW": "cyan",
                "UNGATED": "yellow", "PASS": "green"}
WIDTH = 100  # without a terminal
_NUM = r"[-+]?(\d[\d.]*(e[-+]?\d+)?|nan|inf)%?"
_NUMERIC_CELL = re.compile(rf"^(?=\S)({_NUM})?( ?\[{_NUM}, {_NUM}\])?( / {_NUM})*$", re.IGNORECASE)


def make_console(width: int | None = None) -> Console:
    """A Console writing to the current stdout (Typer's CliRunner swaps it) at an explicit width."""
    if width is None and not os.environ.get("COLUMNS", "").strip().isdigit() and not _isatty():
        width = WIDTH
    return Console(width=width)


def _isatty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def cell_text(v, fmt: str) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and pd.isna(v)):
        return ""
    if isinstance(v, float):
        return format(v, fmt)
    return str(v)


def is_numeric_column(values: Sequence[str], numeric_dtype: bool) -> bool:
    """Numbers (or "55.10 [52.31, 57.86]", "20 / 2 / 8"): such a column must never wrap."""
    cells = [v for v in values if v != ""]
    return numeric_dtype or (bool(cells) and all(_NUMERIC_CELL.match(v) for v in cells))


def text_frame(df: pd.DataFrame, floatfmt: str = ".2f", formats: dict[str, str] | None = None) -> pd.DataFrame:
    """Every cell as the string a person sees."""
    formats = formats or {}
    return pd.DataFrame({str(c): [cell_text(v, formats.get(str(c), floatfmt)) for v in df[c]] for c in df.columns})


def _numeric_flags(df: pd.DataFrame, text: pd.DataFrame) -> list[bool]:
    return [is_numeric_column(list(text[str(c)]), pd.api.types.is_numeric_dtype(df[c])
                              and not pd.api.types.is_bool_dtype(df[c])) for c in df.columns]


def needed_width(text: pd.DataFrame, numeric: Sequence[bool], min_text: int = 8) -> int:
    """Columns a Rich table of `text` needs at least: unbreakable columns whole, text ones at `min_text`."""
    total = 1
    for col, num in zip(text.columns, numeric, strict=True):
        widest = max([len(v) for v in text[col]] + [max(len(h) for h in str(col).splitlines() or [""])])
        total += (widest if num else min(widest, min_text)) + 3  # padding 2 + one rule
    return total


def rich_table(df: pd.DataFrame, title: str | None = None, floatfmt: str = ".2f",
               formats: dict[str, str] | None = None, sections: Sequence[int] = (),
               styles: Sequence[str | None] | None = None, keep_whole: Sequence[str] = ()) -> Table:
    """Numbers right-aligned and unbreakable, text folding, statuses coloured, markup escaped.

    `sections`: row indices that start a new group (a rule above them). `styles`: per-row Rich style.
    `keep_whole`: text columns that should not fold either (the caller checked they fit).
    """
    text = text_frame(df, floatfmt, formats)
    numeric = _numeric_flags(df, text)
    table = Table(title=title, show_lines=False, title_justify="left")
    for col, num in zip(text.columns, numeric, strict=True):
        if col in keep_whole and not num:
            widest = max([len(v) for v in text[col]] + [len(col)])
            table.add_column(escape(col), justify="left", no_wrap=True, min_width=widest)
        elif num:
            widest = max([len(v) for v in text[col]] + [len(h) for h in col.splitlines() or [""]])
            table.add_column(escape(col), justify="right", no_wrap=True, min_width=widest)
        else:
            table.add_column(escape(col), justify="left", overflow="fold")
    starts = set(sections)
    for i, row in enumerate(text.itertuples(index=False)):
        if i in starts and i > 0:
            table.add_section()
        cells = []
        for s in row:
            style = STATUS_STYLE.get(s)
            cells.append(f"[{style}]{s}[/]" if style else escape(s))
        table.add_row(*cells, style=styles[i] if styles else None)
    return table


def print_frame(df: pd.DataFrame, title: str | None = None, console: Console | None = None,
                formats: dict[str, str] | None = None, sections: Sequence[int] = (),
                styles: Sequence[str | None] | None = None, keep_whole: Sequence[str] = ()) -> None:
    """Console is made per call so it writes to the current stdout (Typer's CliRunner swaps it).

    `keep_whole` columns stay unfolded only when the table still fits the console with them whole."""
    console = console or make_console()
    if keep_whole and not fits(df, console.width, formats=formats, keep_whole=keep_whole):
        keep_whole = ()
    console.print(rich_table(df, title=title, formats=formats, sections=sections, styles=styles,
                             keep_whole=keep_whole))


def fits(df: pd.DataFrame, width: int, floatfmt: str = ".2f", formats: dict[str, str] | None = None,
         keep_whole: Sequence[str] = ()) -> bool:
    text = text_frame(df, floatfmt, formats)
    flags = [f or c in keep_whole for f, c in zip(_numeric_flags(df, text), text.columns, strict=True)]
    return needed_width(text, flags) <= width

