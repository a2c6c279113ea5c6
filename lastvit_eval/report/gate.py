"""Regression gate: current metrics vs a committed baseline CSV, with a tolerance in points.

Matching: a row is identified by (checkpoint, pooling, dataset, metric), not by the run folder name, so
a CI job that writes its runs under a fresh folder still lines up with the committed baseline. Only when
that key is ambiguous (two runs of the same checkpoint x pooling x dataset, e.g. LAST with different k,
in the baseline or now) is `run` added to the key for every row; if it is still ambiguous the inputs are
rejected. Every metric is treated as higher-is-better (accuracies and hit rates in percent).

Statuses: PASS (delta >= -tolerance), FAIL (dropped by more than its tolerance), MISSING (in the baseline,
absent or empty now: fails, a vanished metric is not a pass), NEW (absent or empty in the baseline: reported,
never fails). The baseline is either CSV `lastvit-eval report` writes (report.csv, long; or
report_wide.csv) with an optional `tolerance` column overriding the default per row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import GateFailed, InputError
from .aggregate import IDENTITY, natural_key, sort_long
from .write import atomic_write_text, to_markdown

KEY = ["checkpoint", "pooling", "dataset", "metric"]
PASS, FAIL, MISSING, NEW = "PASS", "FAIL", "MISSING", "NEW"
_CI_SUFFIXES = (".ci_low", ".ci_high", ".n")
_EPS = 1e-9  # a drop of exactly the tolerance passes, whatever the float rounding


def read_baseline(path: str | Path) -> pd.DataFrame:
    """Read a baseline CSV (long or wide, as the report writes them) into long form with `tolerance`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: baseline CSV does not exist")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in ("checkpoint", "pooling", "dataset") if c not in raw.columns]
    if missing:
        raise InputError(f"{path}: baseline lacks identity column(s) {', '.join(missing)}")
    if "metric" in raw.columns:
        if "value" not in raw.columns:
            raise InputError(f"{path}: baseline has a 'metric' column but no 'value' column")
        long = raw
    else:
        fixed = {*IDENTITY, "tolerance"}
        metrics = [c for c in raw.columns if c not in fixed and not c.endswith(_CI_SUFFIXES)]
        if not metrics:
            raise InputError(f"{path}: baseline has no metric columns")
        ident = [c for c in raw.columns if c in fixed]
        long = raw.melt(id_vars=ident, value_vars=metrics, var_name="metric", value_name="value")
    cols = [c for c in [*IDENTITY, "metric", "value", "tolerance"] if c in long.columns]
    long = long[cols].copy()
    long["value"] = _numbers(long["value"], path, "value")
    has_tol = "tolerance" in long.columns
    long["tolerance"] = _numbers(long["tolerance"], path, "tolerance") if has_tol else float("nan")
    if (long["tolerance"] < 0).any():
        raise InputError(f"{path}: negative tolerance in the 'tolerance' column")
    return long


def _numbers(col: pd.Series, path: Path, name: str) -> pd.Series:
    text = col.astype(str).str.strip()
    num = pd.to_numeric(text.where(text != ""), errors="coerce").astype(float)
    bad = text[(text != "") & num.isna() & (text.str.lower() != "nan")]
    if len(bad):
        raise InputError(f"{path}: {name} {bad.iloc[0]!r} on data row {bad.index[0] + 1} is not a number")
    return num


def match_key(baseline: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    """KEY, plus `run` when KEY alone names two rows in either table (see the module docstring)."""
    if not (baseline.duplicated(KEY).any() or current.duplicated(KEY).any()):
        return list(KEY)
    if "run" not in baseline.columns or "run" not in current.columns:
        raise InputError("baseline or current results repeat a checkpoint/pooling/dataset/metric and have no "
                         "'run' column to tell them apart")
    key = ["checkpoint", "pooling", "dataset", "run", "metric"]
    for name, df in (("baseline", baseline), ("current results", current)):
        dup = df[df.duplicated(key, keep=False)]
        if len(dup):
            r = dup.iloc[0]
            raise InputError(f"{name}: {r['checkpoint']}/{r['pooling']}/{r['dataset']}/{r['run']} "
                             f"has metric {r['metric']} more than once")
    return key


@dataclass
class GateReport:
    table: pd.DataFrame  # key columns, baseline, current, delta, tolerance, status
    key: list[str]

    def count(self, status: str) -> int:
        return int((self.table["status"] == status).sum())

    @property
    def failed(self) -> bool:
        return self.count(FAIL) + self.count(MISSING) > 0

    def headline(self) -> str:
        verdict = "FAILED" if self.failed else "PASSED"
        counts = ", ".join(f"{self.count(s)} {s.lower()}" for s in (FAIL, MISSING, NEW, PASS))
        return f"Regression gate {verdict}: {counts}"

    def markdown(self) -> str:
        t = self.table
        shown = t[self.key].copy()
        shown["baseline"] = [_fmt(v) for v in t["baseline"]]
        shown["current"] = [_fmt(v) for v in t["current"]]
        shown["delta"] = [_fmt(v, sign=True) for v in t["delta"]]
        shown["tolerance"] = [_fmt(v) for v in t["tolerance"]]
        shown["status"] = [f"**{s}**" if s in (FAIL, MISSING) else s for s in t["status"]]
        return f"### {self.headline()}\n\n" + to_markdown(shown)


def _fmt(v: float, sign: bool = False) -> str:
    if pd.isna(v):
        return ""
    return f"{v:+.2f}" if sign else f"{v:.2f}"


def compare_to_baseline(current: pd.DataFrame, baseline: pd.DataFrame, tolerance: float = 0.5) -> GateReport:
    """Join current (long report table) to the baseline and give each metric a status."""
    if tolerance < 0:
        raise InputError(f"--tolerance must be >= 0, got {tolerance}")
    base = baseline[baseline["value"].notna()]
    cur = current[current["value"].notna()]
    key = match_key(base, cur)
    b = base[[*key, "value", "tolerance"]].rename(columns={"value": "baseline"})
    c = cur[[*key, "value"]].rename(columns={"value": "current"})
    for df in (b, c):
        for k in key:
            df[k] = df[k].astype(str)
    t = b.merge(c, on=key, how="outer")
    t["tolerance"] = t["tolerance"].fillna(tolerance).astype(float)
    t["delta"] = t["current"] - t["baseline"]
    status = pd.Series(PASS, index=t.index)
    status[t["delta"] < -t["tolerance"] - _EPS] = FAIL
    status[t["current"].isna()] = MISSING
    status[t["baseline"].isna()] = NEW
    t["status"] = status
    t.loc[t["status"] == NEW, "tolerance"] = float("nan")
    t = sort_long(t)[[*key, "baseline", "current", "delta", "tolerance", "status"]]
    return GateReport(table=t, key=key)


def write_gate(report: GateReport, out_dir: str | Path) -> Path:
    """gate.md in the output folder, and the same Markdown appended to $GITHUB_STEP_SUMMARY when set."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = report.markdown()
    path = out_dir / "gate.md"
    atomic_write_text(path, md)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(md + "\n")
    return path


def enforce(report: GateReport) -> None:
    """Raise GateFailed (exit code 1) naming the worst offenders when any metric failed or went missing."""
    if not report.failed:
        return
    bad = report.table[report.table["status"].isin([FAIL, MISSING])]
    names = sorted({f"{r['metric']} ({r['status']})" for _, r in bad.iterrows()}, key=natural_key)
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    raise GateFailed(f"{report.headline()}; e.g. {', '.join(names[:3])}{more}")
