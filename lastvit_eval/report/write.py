"""Write one run's results under results/<run>/ atomically: metrics.json, table.csv, table.md, rows."""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from pathlib import Path

import pandas as pd

from .. import __version__
from ..result import SCHEMA_VERSION, Result


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temp file and rename, so a killed run never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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


def metrics_table(record: dict) -> pd.DataFrame:
    """One row per metric with the run's identity columns; stable order for readable diffs."""
    prov = record.get("provenance", {})
    rows = []
    for key in sorted(record["metrics"]):
        m = record["metrics"][key]
        rows.append(
            {
                "run": record.get("run"),
                "checkpoint": prov.get("model", {}).get("name"),
                "pooling": prov.get("pooling", {}).get("name"),
                "dataset": prov.get("dataset", {}).get("name"),
                "metric": key,
                "value": m["value"],
                "ci_low": m["ci_low"],
                "ci_high": m["ci_high"],
                "n": m["n"],
            }
        )
    return pd.DataFrame(rows, columns=["run", "checkpoint", "pooling", "dataset", "metric", "value",
                                       "ci_low", "ci_high", "n"])


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
    """Write metrics.json, table.csv, table.md and each evaluator's rows/tables; returns the record."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = run_record(results, provenance, run_name or out_dir.name)
    table = metrics_table(record)
    for r in results:
        prefix = r.evaluator.replace("-", "_")
        if r.rows is not None:
            _atomic_csv(r.rows, out_dir / f"{prefix}_rows.csv")
        for name, t in r.tables.items():
            _atomic_csv(t, out_dir / f"{prefix}_{name}.csv")
    _atomic_csv(table, out_dir / "table.csv")
    atomic_write_text(out_dir / "table.md", to_markdown(table))
    atomic_write_text(out_dir / "metrics.json", json.dumps(record, indent=2, sort_keys=False) + "\n")
    return record


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False, float_format="%.6g"))
