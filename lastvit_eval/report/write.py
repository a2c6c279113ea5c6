"""Write one run's results under results/<run>/ atomically: metrics.json, table.csv, table.md, rows."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from .. import __version__
from ..errors import InputError
from ..result import SCHEMA_VERSION, Result
from .outdir import ensure_writable_dir


def _cannot_write(path: Path, e: OSError) -> InputError:
    return InputError(f"{path}: cannot write ({e.strerror or e})")


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _write_temp(path: Path, data: bytes) -> Path:
    """`data` in a temp file next to `path`, flushed to disk (a full disk often shows only at fsync).

    Any failure removes the temp file and is an InputError naming `path` and the OS reason.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        _remove_quietly(tmp)
        raise _cannot_write(path, e) from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    return tmp


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise _cannot_write(path, e) from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temp file and rename: a killed run or a full disk never leaves a half-written file."""
    path = Path(path)
    _replace(_write_temp(path, data), path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class StagedWrites:
    """Several files that appear together: all written under temp names first, then renamed in order.

    If any write fails (a full disk), every temp file is removed and the files already there stay as they
    were; renames need no space, so once every temp file is written the set is replaced whole.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def text(self, path: Path, text: str) -> None:
        self._pending.append((_write_temp(Path(path), text.encode("utf-8")), Path(path)))

    def csv(self, df: pd.DataFrame, path: Path, float_format: str = "%.6g") -> None:
        self.text(path, df.to_csv(index=False, float_format=float_format, lineterminator="\n"))

    def abort(self) -> None:
        for tmp, _ in self._pending:
            _remove_quietly(tmp)
        self._pending = []

    def commit(self) -> None:
        pending, self._pending = self._pending, []
        for i, (tmp, path) in enumerate(pending):
            try:
                _replace(tmp, path)
            except InputError:
                for rest, _ in pending[i + 1:]:
                    _remove_quietly(rest)
                raise


@contextlib.contextmanager
def staged_writes() -> Iterator[StagedWrites]:
    """`with staged_writes() as w: w.text(...)`: commit on success, remove every temp file on any error."""
    w = StagedWrites()
    try:
        yield w
    except BaseException:
        w.abort()
        raise
    w.commit()


def run_record(results: list[Result], provenance: dict, run_name: str) -> dict:
    metrics: dict[str, dict] = {}
    info: dict[str, dict] = {}
    for r in results:
        for key, m in r.metrics.items():
            metrics[key] = m.to_dict()
        info[r.evaluator] = r.info
    return {
        "schema_version": SCHEMA_VERSION,
        "run": run_name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "toolkit_version": __version__,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "provenance": provenance,
        "metrics": metrics,
        "info": info,
    }


TABLE_COLUMNS = ["run", "checkpoint", "pooling", "dataset", "metric", "value", "ci_low", "ci_high", "n",
                 "unit", "direction"]


def metrics_table(record: dict) -> pd.DataFrame:
    """One row per metric with the run's identity, unit and direction; natural metric order (k10 < k20 < k100)."""
    from .units import natural_key

    prov = record.get("provenance", {})
    rows = []
    for key in sorted(record["metrics"], key=natural_key):
        m = record["metrics"][key]
        rows.append(
            {
                "run": record.get("run"),
                "checkpoint": prov.get("model", {}).get("name"),
                "pooling": prov.get("pooling", {}).get("name"),
                "dataset": prov.get("dataset", {}).get("name"),
                "metric": key,
                "value": m["value"],
                "ci_low": m.get("ci_low"),
                "ci_high": m.get("ci_high"),
                "n": m.get("n"),
                "unit": m.get("unit"),
                "direction": m.get("direction"),
            }
        )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def to_markdown(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """Markdown without the optional `tabulate` dependency: pipes, fixed float format."""

    def fmt(v) -> str:
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return ""
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v).replace("|", "\\|")

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_run(out_dir: Path, results: list[Result], provenance: dict, run_name: str | None = None) -> dict:
    """Write metrics.json, table.csv, table.md and each evaluator's rows/tables; returns the record.

    The folder is checked first (a file, under a file, read-only: one line naming it, nothing written);
    every file is staged under a temp name and the set replaced together, metrics.json last, so a failure
    leaves the previous run's files as they were.
    """
    out_dir = Path(out_dir)
    ensure_writable_dir(out_dir)
    record = run_record(results, provenance, run_name or out_dir.name)
    table = metrics_table(record)
    files: list[str] = []
    with staged_writes() as w:
        for r in results:
            prefix = r.evaluator.replace("-", "_")
            if r.rows is not None:
                w.csv(r.rows, out_dir / f"{prefix}_rows.csv")
                files.append(f"{prefix}_rows.csv")
            for name, t in r.tables.items():
                w.csv(t, out_dir / f"{prefix}_{name}.csv")
                files.append(f"{prefix}_{name}.csv")
        w.csv(table, out_dir / "table.csv")
        w.text(out_dir / "table.md", to_markdown(display_metrics(table)))
        record["files"] = sorted([*files, "table.csv", "table.md", "metrics.json"])
        w.text(out_dir / "metrics.json", json.dumps(record, indent=2, sort_keys=False) + "\n")
    return record


def display_metrics(table: pd.DataFrame) -> pd.DataFrame:
    """table.md: every column of table.csv, numbers with the digits their unit calls for."""
    from .units import digits_for

    out = table.astype(object).copy()
    for i, row in table.iterrows():
        d = digits_for(row["unit"], row["metric"])
        for c in ("value", "ci_low", "ci_high"):
            v = row[c]
            out.at[i, c] = "" if v is None or pd.isna(v) else f"{float(v):.{d}f}"
        n = row["n"]
        out.at[i, "n"] = "" if n is None or pd.isna(n) else str(int(n))
    return out


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False, float_format="%.6g"))
