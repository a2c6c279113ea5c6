"""Many runs' metrics.json -> one table, in a fixed row/column order and number format.

Committed tables are diffed by people and CI, so the same inputs must always give byte-identical files:
rows are sorted by the identity columns, metric columns by natural name order (`k10` before `k100`),
and every float is written with a fixed number of decimals.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from ..errors import InputError
from ..result import SCHEMA_VERSION
from .units import DIRECTIONS, UNITS, blank, digits_for, natural_key
from .write import metrics_table, staged_writes, to_markdown

IDENTITY = ["checkpoint", "pooling", "dataset", "run"]
LONG_COLUMNS = [*IDENTITY, "metric", "value", "ci_low", "ci_high", "n", "unit", "direction"]
CSV_FLOAT = "%.4f"  # 4 decimals: below any CI width we measure, in points and in cosine alike
MD_DIGITS = 2
UNITS_SINCE = 2  # records of this schema_version on must declare unit and direction of every metric


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Each path is a run folder (holds metrics.json) or a folder holding run folders at any depth."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"{p}: run directory does not exist")
        if p.is_file():
            if p.name != "metrics.json":
                raise InputError(f"{p}: expected a run directory (or its metrics.json)")
            runs.append(p.parent)
        elif (p / "metrics.json").is_file():
            runs.append(p)
        else:
            children = sorted(m.parent for m in p.rglob("metrics.json"))
            if not children:
                raise InputError(f"{p}: no metrics.json in it nor in any of its sub-directories")
            runs.extend(children)
    seen: set[Path] = set()
    unique = []
    for r in runs:
        key = r.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique


def load_record(run_dir: str | Path) -> dict:
    """Read and check one run's metrics.json; anything malformed is an InputError naming the file."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise InputError(f"{path}: missing (not a run directory written by lastvit-eval)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
        raise InputError(f"{path}: no 'metrics' object; not a lastvit-eval metrics.json")
    version = record.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise InputError(f"{path}: schema_version {version!r} is not one this toolkit reads "
                         f"(<= {SCHEMA_VERSION})")
    for key, m in record["metrics"].items():
        if not isinstance(m, dict) or "value" not in m:
            raise InputError(f"{path}: metric {key!r} has no 'value'")
        for field, allowed in (("unit", UNITS), ("direction", DIRECTIONS)):
            v = m.get(field)
            if blank(v):
                if version >= UNITS_SINCE:
                    raise InputError(f"{path}: metric {key!r} has no {field} (schema_version {version} "
                                     f"records declare one)")
            elif v not in allowed:
                raise InputError(f"{path}: metric {key!r} has {field} {v!r}; expected one of {', '.join(allowed)}")
    prov = record.setdefault("provenance", {})
    sections = ("model", "pooling", "dataset")
    if not isinstance(prov, dict) or any(not isinstance(prov.get(k, {}), dict) for k in sections):
        raise InputError(f"{path}: 'provenance' (and its model/pooling/dataset) must be JSON objects")
    record.setdefault("run", Path(run_dir).name)
    return record


def record_identity(record: dict) -> tuple[str, str, str, str]:
    """(checkpoint, pooling, dataset, run) as written in the tables (same fields as `metrics_table`)."""
    prov = record.get("provenance") or {}

    def name(section: str) -> str:
        v = (prov.get(section) or {}).get("name")
        return "" if v is None else str(v)

    return name("model"), name("pooling"), name("dataset"), str(record.get("run", ""))


def long_table(records: Sequence[dict]) -> pd.DataFrame:
    """One row per run x metric: the format the regression gate reads back as a baseline."""
    frames = [metrics_table(r) for r in records if r["metrics"]]
    if not frames:
        return pd.DataFrame(columns=LONG_COLUMNS)
    df = pd.concat(frames, ignore_index=True)[LONG_COLUMNS]
    for c in [*IDENTITY, "metric", "unit", "direction"]:
        df[c] = df[c].map(lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
    for c in ["value", "ci_low", "ci_high"]:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    df["n"] = pd.to_numeric(df["n"], errors="coerce").astype("Int64")
    return sort_long(df)


def sort_long(df: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in [*IDENTITY, "metric"] if c in df.columns]
    return df.sort_values(keys, key=lambda s: s.map(natural_key), kind="stable").reset_index(drop=True)


def metric_names(long: pd.DataFrame) -> list[str]:
    return sorted(long["metric"].unique(), key=natural_key)


def wide_table(long: pd.DataFrame) -> pd.DataFrame:
    """Rows checkpoint x pooling x dataset x run; per metric `<m>`, `<m>.ci_low`, `<m>.ci_high` columns."""
    names = metric_names(long)
    ident = long[IDENTITY].drop_duplicates().reset_index(drop=True)
    out = ident.copy()
    for name in names:
        sub = long.loc[long["metric"] == name, [*IDENTITY, "value", "ci_low", "ci_high"]]
        sub = sub.rename(columns={"value": name, "ci_low": f"{name}.ci_low", "ci_high": f"{name}.ci_high"})
        out = out.merge(sub, on=IDENTITY, how="left")
    return out


def format_cell(value: float, lo: float, hi: float, digits: int = MD_DIGITS) -> str:
    """`55.10 [52.31, 57.86]`; just the value when there is no CI; empty when there is no value."""
    if pd.isna(value):
        return ""
    s = f"{value:.{digits}f}"
    if not (pd.isna(lo) or pd.isna(hi)):
        s += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return s


def display_table(long: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """The wide table with one "value [lo, hi]" string per metric, digits by unit: what people read."""
    names = metric_names(long) if metrics is None else list(metrics)
    wide = wide_table(long[long["metric"].isin(names)])
    units = {m: u for m, u in zip(long["metric"], long.get("unit", [None] * len(long)), strict=True)
             if not blank(u)}
    out = wide[IDENTITY].copy()
    for name in names:
        d = digits_for(units.get(name), name)
        out[name] = [
            format_cell(v, lo, hi, d)
            for v, lo, hi in zip(wide[name], wide[f"{name}.ci_low"], wide[f"{name}.ci_high"], strict=True)
        ]
    return out


def long_csv(long: pd.DataFrame) -> str:
    return long.to_csv(index=False, float_format=CSV_FLOAT, lineterminator="\n")


def write_report(long: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write report.csv (long; a valid gate baseline), report_wide.csv and report.md; returns the paths."""
    from .outdir import ensure_writable_dir

    out_dir = Path(out_dir)
    ensure_writable_dir(out_dir)
    paths = {
        "csv": out_dir / "report.csv",
        "wide_csv": out_dir / "report_wide.csv",
        "md": out_dir / "report.md",
    }
    wide = wide_table(long)
    with staged_writes() as w:
        w.text(paths["csv"], long_csv(long))
        w.text(paths["wide_csv"], wide.to_csv(index=False, float_format=CSV_FLOAT, lineterminator="\n"))
        w.text(paths["md"], to_markdown(display_table(long)))
    return paths


def aggregate(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Run folders (or folders of run folders) -> the sorted long table."""
    return aggregate_records(paths)[0]


def aggregate_records(paths: Iterable[str | Path]) -> tuple[pd.DataFrame, dict[tuple, dict]]:
    """The long table and each run's record by its identity (checkpoint, pooling, dataset, run)."""
    runs = find_runs(paths)
    records = [load_record(r) for r in runs]
    seen: dict[tuple, Path] = {}
    for run_dir, rec in zip(runs, records, strict=True):
        ident = record_identity(rec)
        if ident in seen:
            raise InputError(
                f"{run_dir}: same checkpoint/pooling/dataset/run name as {seen[ident]}; rename one run"
            )
        seen[ident] = run_dir
    return long_table(records), {record_identity(r): r for r in records}
