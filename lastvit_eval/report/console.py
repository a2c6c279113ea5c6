"""Rich tables for the console: the end of a run, `report`, the gate and `compare`, readable at 100 columns.

Files (report.csv, report.md, gate.md, compare.md) keep every column; the console shows a form that fits:
`report` lists one row per run and metric (or, with `--metrics`, a pivot of the chosen ones), the gate
lists the rows that did not pass (the full table is in gate.md).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import InputError
from ..result import Result
from .show import WIDTH, fits, make_console, print_frame
from .units import blank, digits_for, display_unit, natural_key

console = make_console()
SHORT_UNIT = {"percent": "%", "cosine": "cos", "seconds": "s"}  # console only; files spell units out


def describe_pooling(p) -> str:
    """A pooling's short name (`last-k1`) for people: `LAST pooling (k=1 patch per channel)`."""
    if p.kind == "last":
        extra = "".join([f", sigma={p.sigma:g}" if p.sigma is not None else "",
                         ", paper score" if p.formula == "paper" else ""])
        return f"LAST pooling (k={p.topk} patch{'es' if p.topk != 1 else ''} per channel{extra})"
    return {"cls": "CLS pooling (the class token)", "gap": "GAP pooling (mean of the patch tokens)",
            "map": "MAP pooling (the model's own attention-pool head)"}.get(p.kind, p.name)


def pooling_caption(poolings: Sequence) -> str:
    """One line naming every pooling of a run, printed once under its tables."""
    return "; ".join(f"{p.name} = {describe_pooling(p)}" for p in poolings)


def fmt_ci(m, digits: int = 2) -> str:
    if m.ci_low is None or m.ci_high is None:
        return ""
    return f"[{m.ci_low:.{digits}f}, {m.ci_high:.{digits}f}]"


def print_result(result: Result, title: str) -> None:
    frame = pd.DataFrame(
        [(key, f"{m.value:.{digits_for(m.unit, key)}f}", fmt_ci(m, digits_for(m.unit, key)),
          "" if m.n is None else str(m.n), m.unit or "") for key, m in result.metrics.items()],
        columns=["metric", "value", "95% CI", "n", "unit"],
    )
    print_frame(frame, title=title, console=make_console())


def print_counts(title: str, counts: dict[str, int]) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("images")
    table.add_column("count", justify="right", no_wrap=True)
    for k, v in counts.items():
        table.add_row(escape(str(k)), str(v))
    make_console().print(table)


def _value(v: float, d: int) -> str:
    return "" if v is None or pd.isna(v) else f"{v:.{d}f}"


def _ci(lo: float, hi: float, d: int) -> str:
    return "" if lo is None or hi is None or pd.isna(lo) or pd.isna(hi) else f"[{lo:.{d}f}, {hi:.{d}f}]"


def run_labels(long: pd.DataFrame) -> pd.Series:
    """The run name, with its checkpoint when two runs share a name."""
    ident = long[["checkpoint", "pooling", "dataset", "run"]].drop_duplicates()
    dup = set(ident["run"][ident["run"].duplicated(keep=False)])
    return pd.Series([f"{r} ({c})" if r in dup else r for r, c in zip(long["run"], long["checkpoint"], strict=True)],
                     index=long.index)


def long_view(long: pd.DataFrame) -> tuple[pd.DataFrame, list[int], list[str | None]]:
    """One row per run and metric; the run's name on its first row, checkpoint and pooling/dataset below it."""
    rows, sections, styles = [], [], []
    labels = run_labels(long)
    for _, group in long.groupby(["checkpoint", "pooling", "dataset", "run"], sort=False):
        sections.append(len(rows))
        first = group.iloc[0]
        ident = [labels[group.index[0]], str(first["checkpoint"]), f"{first['pooling']} · {first['dataset']}"]
        if len(group) < len(ident):
            ident = [ident[0], " · ".join(ident[1:])] if len(group) == 2 else [", ".join(ident)]
        for i, (_, r) in enumerate(group.iterrows()):
            d = digits_for(r.get("unit"), r["metric"])
            unit = SHORT_UNIT.get(str(r["unit"]), str(r["unit"])) if not blank(r.get("unit")) else \
                f"({SHORT_UNIT.get(display_unit(None, r['metric']) or '?', '?')})"
            n = "" if r["n"] is None or pd.isna(r["n"]) else str(int(r["n"]))
            rows.append((ident[i] if i < len(ident) else "", r["metric"], _value(r["value"], d),
                         _ci(r["ci_low"], r["ci_high"], d), n, unit))
            styles.append(None)
    frame = pd.DataFrame(rows, columns=["run", "metric", "value", "95% CI", "n", "unit"])
    return frame, sections, styles


def select_metrics(long: pd.DataFrame, patterns: Sequence[str]) -> list[str]:
    """`--metrics` names or globs (comma-separated or repeated), in the order given; unknown ones are errors."""
    have = sorted(long["metric"].unique(), key=natural_key)
    chosen: list[str] = []
    for pattern in [p.strip() for spec in patterns for p in str(spec).split(",") if p.strip()]:
        hits = [m for m in have if fnmatch.fnmatchcase(m, pattern)]
        if not hits:
            shown = ", ".join(have[:8]) + (f" and {len(have) - 8} more" if len(have) > 8 else "")
            raise InputError(f"--metrics {pattern!r}: no such metric in these runs (have: {shown})")
        chosen += [m for m in hits if m not in chosen]
    return chosen


def _header(name: str, width: int) -> str:
    """A long metric key broken at its dots onto lines no wider than the column's numbers need."""
    lines: list[str] = []
    for part in name.replace(".", ".\n").splitlines():
        if lines and len(lines[-1]) + len(part) <= width:
            lines[-1] += part
        else:
            lines.append(part)
    return "\n".join(lines)


def pivot_view(long: pd.DataFrame, metrics: Sequence[str], with_ci: bool) -> pd.DataFrame:
    """Rows = runs, one column per chosen metric ("value [lo, hi]" or just the value)."""
    sub = long[long["metric"].isin(metrics)]
    labels = run_labels(sub)
    order = list(dict.fromkeys(labels))
    out = pd.DataFrame({"run": order})
    for m in metrics:
        cells = {}
        for i, r in sub[sub["metric"] == m].iterrows():
            d = digits_for(r.get("unit"), m)
            ci = _ci(r["ci_low"], r["ci_high"], d) if with_ci else ""
            cells[labels[i]] = _value(r["value"], d) + (f" {ci}" if ci else "")
        col = [cells.get(run, "") for run in order]
        widest = max([len(c) for c in col] + [8])
        out[_header(m, widest)] = col
    return out


def print_report(long: pd.DataFrame, console: Console, metrics: Sequence[str] | None = None) -> None:
    """The `report` console table: long form, or the pivot of `--metrics` when it fits (else long form)."""
    width = console.width
    title = f"{long['run'].nunique()} run(s), {len(long)} metric value(s)"
    if metrics:
        chosen = select_metrics(long, metrics)
        for with_ci in (True, False):
            frame = pivot_view(long, chosen, with_ci)
            if fits(frame, width):
                note = "" if with_ci else " (95% CIs in report.md)"
                print_frame(frame, title=f"{len(frame)} run(s), {len(chosen)} metric(s){note}", console=console)
                return
        long = long[long["metric"].isin(chosen)]
        console.print(f"{len(chosen)} metrics do not fit in {width} columns side by side; one row per run "
                      f"and metric instead", soft_wrap=False)
    frame, sections, styles = long_view(long)
    legacy = " (unit): inferred, written before units;" if frame["unit"].str.startswith("(").any() else ""
    print_frame(frame, title=f"{title};{legacy} every column in report.csv / report.md", console=console,
                sections=sections, styles=styles, keep_whole=["metric"])


def print_reference(matched: pd.DataFrame, console: Console) -> None:
    """`report --reference`: measured values beside the published ones, or why there are none."""
    from .reference import display

    if matched.empty:
        console.print("reference: no measured metric has a published counterpart (matched on supervision, "
                      "architecture, dataset and metric; see README, Reproducing the paper)", soft_wrap=True)
        return
    print_frame(display(matched), title=f"{len(matched)} value(s) beside the published ones", console=console)


def print_pib_table(table, console: Console) -> None:
    """`report --paper-table pib`: the pivot, its numbered notes, then the runs that have no cell."""
    print_frame(table.display(), title="point-in-box top-1 (%): measured [95% CI] (paper)", console=console)
    for line in table.note_lines():
        console.print(f"note {escape(line)}", soft_wrap=True)
    for line in table.unplaced_lines():
        console.print(f"not placed: {escape(line)}", soft_wrap=True)


def print_gate(report, console: Console, gate_md) -> None:
    """Rows that did not pass first (the full table is in gate.md), notes, then the one-line summary."""
    from .gate import PASS, STATUSES

    flagged = report.rows([s for s in STATUSES if s != PASS])
    if len(flagged):
        print_frame(report.display(flagged), title="regression gate: rows that did not pass", console=console)
    for note in report.notes():
        console.print(f"note: {escape(note)}")
    console.print(f"full table: {escape(str(gate_md))}", soft_wrap=True)
    if not report.failed:  # a failure ends with the same line as the error message
        console.print(f"[green]{escape(report.summary())}[/]", soft_wrap=True)


def print_comparison(result, console: Console) -> None:
    summary = pd.DataFrame(result.summary_rows(), columns=["", "value"])
    print_frame(summary, title=f"B - A on {result.metric}", console=console)
    if len(result.per_class):
        print_frame(result.per_class, title="per class (points)", console=console,
                    formats={"mcnemar_exact_p": ".3g"})


__all__ = ["WIDTH", "console", "print_comparison", "print_counts", "print_gate", "print_report", "print_result"]
