"""Regression gate: current metrics vs a committed baseline CSV, each with a tolerance in its own unit.

Matching: a row is identified by (checkpoint, pooling, dataset, metric), not by the run folder name, so
a CI job that writes its runs under a fresh folder still lines up with the committed baseline. Only when
that key is ambiguous (two runs of the same checkpoint x pooling x dataset, e.g. LAST with different k,
in the baseline or now) is `run` added to the key for every row; if it is still ambiguous the inputs are
rejected.

Units and directions: every metric carries a unit and a direction (metrics.json, report.csv); the
current record's wins, the baseline's `unit` / `direction` columns fill in. A tolerance of 0.5 means
nothing without a unit (0.5 points of top-1 is noise, 0.5 of a cosine gap is everything), so the default
follows the unit:

    unit     default tolerance    why
    percent  0.5 (points)         about a third of a 95% CI on 10k images
    cosine   0.02                 fg_bg_gap values are a few tenths; a sign flip must never pass
    ratio    0.005
    count    0                    counts are exact
    score    0.01
    seconds  not gated            timings depend on the machine; gated only with `--tolerance seconds=X`

Direction: `higher` fails when the value drops by more than the tolerance, `lower` when it rises by more,
`none` when it moves either way by more. A metric with no unit in either record: only for records written
before units existed (schema_version 1) is the unit inferred from the key (`*.fg_bg_gap` cosine, `*.top<k>`
and recalls percent; `units.infer_legacy`), and the gate says so; a key it cannot infer is NO-UNIT, which
fails: the percent tolerance is never used for a metric that may not be a percentage.

Overrides, strongest first: the baseline's `tolerance` column (per row, in the metric's unit), then
`--tolerance METRIC_GLOB=X` (first matching glob), then `--tolerance UNIT=X`, then the table above.
A bare `--tolerance X` sets the percent tolerance (what it meant when every metric was a percentage).

Statuses: PASS, FAIL (moved the wrong way by more than its tolerance, or its unit/direction changed),
MISSING (in the baseline, absent or empty now: fails, a vanished metric is not a pass), NO-UNIT (fails,
above), NEW (absent or empty in the baseline: reported, never fails), UNGATED (seconds without a
tolerance: reported, never fails). The baseline is a CSV `lastvit-eval report` writes (report.csv, long;
or report_wide.csv) with optional `tolerance`, `unit` and `direction` columns.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import GateFailed, InputError
from .aggregate import IDENTITY, sort_long
from .units import DIRECTIONS, UNITS, blank, digits_for, infer_legacy, natural_key
from .write import atomic_write_text, to_markdown

KEY = ["checkpoint", "pooling", "dataset", "metric"]
PASS, FAIL, MISSING, NO_UNIT, NEW, UNGATED = "PASS", "FAIL", "MISSING", "NO-UNIT", "NEW", "UNGATED"
STATUSES = (FAIL, MISSING, NO_UNIT, NEW, UNGATED, PASS)  # the order rows are listed in
FAILING = (FAIL, MISSING, NO_UNIT)
DEFAULT_TOLERANCE: dict[str, float | None] = {
    "percent": 0.5, "cosine": 0.02, "ratio": 0.005, "count": 0.0, "score": 0.01, "seconds": None,
}
INFERRED = "unit inferred"  # from the key, for a record written before units (see notes())
_CI_SUFFIXES = (".ci_low", ".ci_high", ".n", ".unit", ".direction")
_EPS = 1e-9  # a move of exactly the tolerance passes, whatever the float rounding


@dataclass(frozen=True)
class Tolerances:
    """Default tolerance per unit plus per-metric glob overrides (first match wins)."""

    by_unit: dict[str, float | None] = field(default_factory=lambda: dict(DEFAULT_TOLERANCE))
    by_metric: tuple[tuple[str, float], ...] = ()

    def lookup(self, metric: str, unit: str) -> float | None:
        for pattern, tol in self.by_metric:
            if fnmatch.fnmatchcase(metric, pattern):
                return tol
        return self.by_unit.get(unit)


def parse_tolerances(specs: Sequence[str] | None) -> Tolerances:
    """`["0.3", "cosine=0.05", "seconds=2", "knn.*.top5=1"]` -> Tolerances (bare number: percent)."""
    by_unit = dict(DEFAULT_TOLERANCE)
    by_metric: list[tuple[str, float]] = []
    for spec in specs or []:
        name, sep, text = str(spec).rpartition("=")
        name = name.strip() if sep else "percent"
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"--tolerance {spec!r}: {text!r} is not a number (use X, UNIT=X or METRIC=X)") from None
        if not value >= 0:
            raise InputError(f"--tolerance {spec!r}: must be a number >= 0")
        if not name:
            raise InputError(f"--tolerance {spec!r}: empty name before '='")
        if name in UNITS:
            by_unit[name] = value
        else:
            by_metric.append((name, value))
    return Tolerances(by_unit, tuple(by_metric))


def read_baseline(path: str | Path) -> pd.DataFrame:
    """Read a baseline CSV (long or wide, as the report writes them) into long form with `tolerance`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: baseline CSV does not exist")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
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
    cols = [c for c in [*IDENTITY, "metric", "value", "tolerance", "unit", "direction"] if c in long.columns]
    long = long[cols].copy()
    long["value"] = _numbers(long["value"], path, "value")
    has_tol = "tolerance" in long.columns
    long["tolerance"] = _numbers(long["tolerance"], path, "tolerance") if has_tol else float("nan")
    if (long["tolerance"] < 0).any():
        raise InputError(f"{path}: negative tolerance in the 'tolerance' column")
    for name, allowed in (("unit", UNITS), ("direction", DIRECTIONS)):
        if name not in long.columns:
            long[name] = ""
        long[name] = long[name].astype(str).str.strip()
        bad = long[name][(long[name] != "") & ~long[name].isin(allowed)]
        if len(bad):
            raise InputError(f"{path}: {name} {bad.iloc[0]!r} on data row {bad.index[0] + 1} is not one of "
                             f"{', '.join(allowed)}")
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
    table: pd.DataFrame  # key columns, run, unit, direction, baseline, current, delta, tolerance, status, note
    key: list[str]

    def count(self, status: str) -> int:
        return int((self.table["status"] == status).sum())

    @property
    def failed(self) -> bool:
        return any(self.count(s) for s in FAILING)

    def rows(self, statuses: Sequence[str]) -> pd.DataFrame:
        """Rows with these statuses, in STATUSES order (failures first), then by key."""
        t = self.table[self.table["status"].isin(statuses)]
        rank = t["status"].map({s: i for i, s in enumerate(STATUSES)})
        return t.assign(_rank=rank).sort_values("_rank", kind="stable").drop(columns="_rank")

    def headline(self) -> str:
        verdict = "FAILED" if self.failed else "PASSED"
        shown = [s for s in STATUSES if s in (FAIL, MISSING, NEW, PASS) or self.count(s)]
        counts = ", ".join(f"{self.count(s)} {s.lower()}" for s in shown)
        return f"Regression gate {verdict}: {counts}"

    def summary(self) -> str:
        """One line naming the runs: the failing ones (with up to 3 metrics) or the ones that passed."""
        if self.failed:
            bad = self.rows(FAILING)
            per_run: dict[str, list[str]] = {}
            for _, r in bad.iterrows():
                per_run.setdefault(_run_label(r), []).append(f"{r['metric']} {r['status']}")
            parts = [f"{run} ({', '.join(ms[:3])}{f' and {len(ms) - 3} more' if len(ms) > 3 else ''})"
                     for run, ms in sorted(per_run.items(), key=lambda kv: natural_key(kv[0]))]
            return f"{self.headline()}; failing: {'; '.join(_cap(parts, 4))}"
        runs = sorted({_run_label(r) for _, r in self.table.iterrows()}, key=natural_key)
        return f"{self.headline()}; run(s): {', '.join(_cap(runs, 6))}"

    def notes(self) -> list[str]:
        """Why some rows were read the way they were (inferred units, unit changes), one line each."""
        out = []
        inferred = self.table[self.table["note"] == INFERRED]
        if len(inferred):
            runs = sorted({_run_label(r) for _, r in inferred.iterrows()}, key=natural_key)
            out.append(f"{len(inferred)} metric(s) of {', '.join(_cap(runs, 4))} have no unit (written before "
                       f"units existed); unit and direction inferred from the metric key")
        for _, r in self.table[(self.table["note"] != "") & (self.table["note"] != INFERRED)].iterrows():
            out.append(f"{_run_label(r)} {r['metric']}: {r['note']}")
        return out

    def display(self, rows: pd.DataFrame | None = None, markdown: bool = False) -> pd.DataFrame:
        """Rows as strings, numbers with their unit's digits. Markdown: every column, failing statuses bold.
        Console: run over metric and unit over direction in stacked cells, so the row fits in 100 columns."""
        t = self.table if rows is None else rows
        digits = [digits_for(u, m) for u, m in zip(t["unit"], t["metric"], strict=True)]
        nums = {c: [_fmt(v, d, sign=c == "delta") for v, d in zip(t[c], digits, strict=True)]
                for c in ("baseline", "current", "delta", "tolerance")}
        if not markdown:
            return pd.DataFrame({
                "run / metric": [f"{_run_label(r)}\n{r['metric']}" for _, r in t.iterrows()],
                "unit": [f"{u or '?'}\n{d or '?'}" for u, d in zip(t["unit"], t["direction"], strict=True)],
                "baseline": nums["baseline"], "now": nums["current"], "delta": nums["delta"], "tol": nums["tolerance"],
                "status": list(t["status"]),
            })
        cols = [*self.key, *([] if "run" in self.key else ["run"])]
        shown = t[cols].copy()
        shown["unit"] = t["unit"].to_numpy()
        shown["direction"] = t["direction"].to_numpy()
        for c, v in nums.items():
            shown[c] = v
        shown["status"] = [f"**{s}**" if s in FAILING else s for s in t["status"]]
        shown["note"] = t["note"].to_numpy()
        return shown.reset_index(drop=True)

    def markdown(self) -> str:
        parts = [f"### {self.summary()}\n\n"]
        parts += [f"- {n}\n" for n in self.notes()]
        if self.notes():
            parts.append("\n")
        flagged = self.rows([s for s in STATUSES if s != PASS])
        if len(flagged):
            parts += ["#### Not passing\n\n", to_markdown(self.display(flagged, markdown=True)), "\n"]
        parts += ["#### All metrics\n\n", to_markdown(self.display(markdown=True))]
        return "".join(parts)


def _cap(items: list[str], n: int) -> list[str]:
    return items if len(items) <= n else [*items[:n], f"and {len(items) - n} more"]


def _run_label(r: pd.Series) -> str:
    run = r.get("run")
    if not blank(run):
        return str(run)
    return "/".join(str(r[c]) for c in ("checkpoint", "pooling", "dataset"))


def _fmt(v: float, digits: int, sign: bool = False) -> str:
    if v is None or pd.isna(v):
        return ""
    if round(float(v), digits) == 0:
        v = 0.0  # no "-0.00"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _pick(cur, base) -> str | None:
    return str(cur) if not blank(cur) else (str(base) if not blank(base) else None)


def _judge(r: pd.Series, tolerances: Tolerances) -> tuple[str | None, str | None, float, str, str]:
    """(unit, direction, tolerance, status, note) of one joined row."""
    unit, direction = _pick(r["unit_c"], r["unit_b"]), _pick(r["direction_c"], r["direction_b"])
    note = ""
    for name, c, b in (("unit", r["unit_c"], r["unit_b"]), ("direction", r["direction_c"], r["direction_b"])):
        if not blank(c) and not blank(b) and str(c) != str(b) and not pd.isna(r["current"]):
            return unit, direction, float("nan"), FAIL, f"{name} changed: baseline {b}, now {c}"
    if unit is None or direction is None:
        guess = infer_legacy(str(r["metric"]))
        if guess is not None:
            unit, direction = unit or guess[0], direction or guess[1]
            note = INFERRED
    if pd.isna(r["current"]):
        return unit, direction, float("nan"), MISSING, note
    if pd.isna(r["baseline"]):
        return unit, direction, float("nan"), NEW, note
    if unit is None or direction is None:
        return unit, direction, float("nan"), NO_UNIT, (
            "no unit/direction in metrics.json or the baseline, and none known for this key: add 'unit' and "
            "'direction' columns to the baseline row")
    tol = r["tolerance"] if not pd.isna(r["tolerance"]) else tolerances.lookup(str(r["metric"]), unit)
    if tol is None:
        return unit, direction, float("nan"), UNGATED, note or f"{unit} not gated unless --tolerance {unit}=X"
    delta = r["current"] - r["baseline"]
    worse = {"higher": -delta, "lower": delta, "none": abs(delta)}[direction]
    return unit, direction, float(tol), FAIL if worse > tol + _EPS else PASS, note


def compare_to_baseline(current: pd.DataFrame, baseline: pd.DataFrame,
                        tolerances: Tolerances | None = None) -> GateReport:
    """Join current (long report table) to the baseline and give each metric a status (module docstring)."""
    tolerances = tolerances or Tolerances()
    base = baseline[baseline["value"].notna()].copy()
    cur = current[current["value"].notna()].copy()
    key = match_key(base, cur)
    for df in (base, cur):
        for c in ("unit", "direction", "run"):
            if c not in df.columns:
                df[c] = ""
        if "tolerance" not in df.columns:
            df["tolerance"] = float("nan")
    extra = ["run"] if "run" not in key else []
    b = base[[*key, *extra, "value", "tolerance", "unit", "direction"]].rename(
        columns={"value": "baseline", "unit": "unit_b", "direction": "direction_b", **{c: "run_b" for c in extra}})
    c = cur[[*key, *extra, "value", "unit", "direction"]].rename(
        columns={"value": "current", "unit": "unit_c", "direction": "direction_c", **{c: "run_c" for c in extra}})
    for df in (b, c):
        for k in key:
            df[k] = df[k].astype(str)
    t = b.merge(c, on=key, how="outer")
    if extra:
        t["run"] = [_pick(rc, rb) or "" for rc, rb in zip(t["run_c"], t["run_b"], strict=True)]
    judged = [_judge(r, tolerances) for _, r in t.iterrows()]
    cols = ["unit", "direction", "tolerance", "status", "note"]
    for i, name in enumerate(cols):
        t[name] = [j[i] for j in judged] if judged else pd.Series(dtype=object)
    t["unit"] = t["unit"].fillna("")
    t["direction"] = t["direction"].fillna("")
    t["tolerance"] = t["tolerance"].astype(float)
    t["delta"] = t["current"] - t["baseline"]
    order = [*key, *extra, "unit", "direction", "baseline", "current", "delta", "tolerance", "status", "note"]
    t = sort_long(t)[order]
    return GateReport(table=t, key=key)


def write_gate(report: GateReport, out_dir: str | Path) -> Path:
    """gate.md in the output folder, and the same Markdown appended to $GITHUB_STEP_SUMMARY when set."""
    from .outdir import ensure_writable_dir

    out_dir = Path(out_dir)
    ensure_writable_dir(out_dir)
    md = report.markdown()
    path = out_dir / "gate.md"
    atomic_write_text(path, md)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as f:
                f.write(md + "\n")
        except OSError as e:
            raise InputError(f"{summary}: cannot append the gate summary ({e.strerror or e})") from None
    return path


def enforce(report: GateReport) -> None:
    """Raise GateFailed (exit code 1) with the one-line summary when any metric failed, vanished or has no unit."""
    if report.failed:
        raise GateFailed(report.summary())
