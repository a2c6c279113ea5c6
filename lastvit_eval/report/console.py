"""Rich tables for the end of a run."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..result import Result

console = Console()


def fmt_ci(m) -> str:
    if m.ci_low is None or m.ci_high is None:
        return ""
    return f"[{m.ci_low:.2f}, {m.ci_high:.2f}]"


def print_result(result: Result, title: str) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("n", justify="right")
    for key, m in result.metrics.items():
        table.add_row(key, f"{m.value:.2f}", fmt_ci(m), "" if m.n is None else str(m.n))
    console.print(table)


def print_counts(title: str, counts: dict[str, int]) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("images")
    table.add_column("count", justify="right")
    for k, v in counts.items():
        table.add_row(k, str(v))
    console.print(table)
