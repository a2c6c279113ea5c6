"""Paired comparison of two runs on the same images: is B really better than A on this metric?

Two accuracies on the same images are not independent, so intervals of each run overlapping says little.
We join the per-sample rows on image_id and test the paired difference: a paired bootstrap CI of B - A
(in points) and McNemar's test, which only looks at the images where the two runs disagree.
By the rows convention (`lastvit_eval.result.Result`), metric `<ns>.<rest>` lives in `<ns>_rows.csv`
as the boolean column `<rest>`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..errors import InputError
from .outdir import ensure_writable_dir
from .units import infer_legacy, natural_key
from .write import staged_writes, to_markdown

_BETTER = {"higher": "higher", "lower": "lower", "none": "neither way"}
_TRUE = {"true", "1", "1.0", "yes"}
_FALSE = {"false", "0", "0.0", "no"}


def rows_location(run_dir: str | Path, metric: str) -> tuple[Path, str]:
    """`patch_hit.top1` -> (<run>/patch_hit_rows.csv, "top1"); `knn.k20.top1` -> (knn_rows.csv, k20.top1)."""
    if "." not in metric:
        raise InputError(f"metric {metric!r} is not namespaced (expected e.g. patch_hit.top1)")
    ns, rest = metric.split(".", 1)
    return Path(run_dir) / f"{ns.replace('-', '_')}_rows.csv", rest


def load_outcomes(run_dir: str | Path, metric: str) -> pd.DataFrame:
    """Per-image boolean outcome of `metric` (+ `class` when the rows have it), indexed by image_id."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run directory does not exist")
    path, column = rows_location(run_dir, metric)
    if not path.is_file():
        raise InputError(f"{path}: no per-sample rows for metric {metric!r} in this run")
    try:
        rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    if "image_id" not in rows.columns:
        raise InputError(f"{path}: no image_id column")
    if column not in rows.columns:
        raise InputError(f"{path}: no column {column!r} for metric {metric!r}; "
                         f"columns: {', '.join(rows.columns)}")
    dup = rows["image_id"][rows["image_id"].duplicated()]
    if len(dup):
        raise InputError(f"{path}: image_id {dup.iloc[0]!r} appears more than once")
    text = rows[column].str.strip().str.lower()
    bad = text[~text.isin(_TRUE | _FALSE)]
    if len(bad):
        i = bad.index[0]
        raise InputError(f"{path}: column {column!r} is not boolean (value {rows[column][i]!r} for image "
                         f"{rows['image_id'][i]!r}); compare needs a per-sample hit/miss metric")
    out = pd.DataFrame({"image_id": rows["image_id"], "ok": text.isin(_TRUE).to_numpy()})
    if "class" in rows.columns:
        out["class"] = rows["class"]
    return out.set_index("image_id")


@dataclass
class Comparison:
    """Everything compare reports; percentages and differences in points."""

    metric: str
    run_a: str
    run_b: str
    n_shared: int
    n_only_a: int
    n_only_b: int
    acc_a: float
    acc_b: float
    diff: float
    diff_ci_low: float | None
    diff_ci_high: float | None
    ci_method: str
    both_right: int  # the 2x2 table: A right/wrong x B right/wrong
    a_right_b_wrong: int
    a_wrong_b_right: int
    both_wrong: int
    mcnemar_exact_p: float
    mcnemar_chi2: float | None
    mcnemar_chi2_p: float
    per_class: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    unit: str = "percent"  # a per-sample hit/miss metric is a percentage; differences are in points
    direction: str = "higher"  # which way is better, from the runs' metrics.json

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("per_class")
        d = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
        d["per_class"] = json.loads(self.per_class.to_json(orient="records", double_precision=15))
        return d

    def summary_rows(self) -> list[tuple[str, str]]:
        ci = ("" if self.diff_ci_low is None else f" [{self.diff_ci_low:+.2f}, {self.diff_ci_high:+.2f}]")
        return [
            ("metric", self.metric),
            ("A", self.run_a),
            ("B", self.run_b),
            ("images shared / only A / only B", f"{self.n_shared} / {self.n_only_a} / {self.n_only_b}"),
            ("A (%)", f"{self.acc_a:.2f}"),
            ("B (%)", f"{self.acc_b:.2f}"),
            ("B - A (points, 95% paired bootstrap CI)", f"{self.diff:+.2f}{ci}"),
            ("both right / A only / B only / both wrong",
             f"{self.both_right} / {self.a_right_b_wrong} / {self.a_wrong_b_right} / {self.both_wrong}"),
            ("McNemar exact p (binomial, two-sided)", f"{self.mcnemar_exact_p:.4g}"),
            ("McNemar chi-square (continuity corr.), p",
             "" if self.mcnemar_chi2 is None else f"{self.mcnemar_chi2:.4g}, {self.mcnemar_chi2_p:.4g}"),
            ("unit, better", f"{self.unit}, {_BETTER[self.direction]}"),
        ]

    def markdown(self) -> str:
        summary = pd.DataFrame(self.summary_rows(), columns=["quantity", "value"])
        table = pd.DataFrame(
            [["A right", self.both_right, self.a_right_b_wrong],
             ["A wrong", self.a_wrong_b_right, self.both_wrong]],
            columns=["", "B right", "B wrong"],
        )
        parts = [f"### Paired comparison: {self.metric}\n", to_markdown(summary), "\n", to_markdown(table)]
        if len(self.per_class):
            per_class = self.per_class.copy()
            per_class["mcnemar_exact_p"] = [f"{p:.3g}" for p in per_class["mcnemar_exact_p"]]
            parts += ["\n", to_markdown(per_class)]
        return "".join(parts)

    def csv(self) -> str:
        """Per-class table with an `(all)` row first; one place to read every difference."""
        total = pd.DataFrame([{
            "class": "(all)", "n": self.n_shared, "a": self.acc_a, "b": self.acc_b, "diff": self.diff,
            "a_only": self.a_right_b_wrong, "b_only": self.a_wrong_b_right,
            "mcnemar_exact_p": self.mcnemar_exact_p,
        }])
        df = pd.concat([total, self.per_class], ignore_index=True) if len(self.per_class) else total
        return df.to_csv(index=False, float_format="%.4f", lineterminator="\n")


def mcnemar(a_right_b_wrong: int, a_wrong_b_right: int) -> tuple[float, float | None, float]:
    """(exact two-sided p, chi-square with continuity correction, its p) from the discordant counts."""
    b, c = int(a_right_b_wrong), int(a_wrong_b_right)
    if b + c == 0:
        return 1.0, None, 1.0
    exact = float(sps.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    chi2 = max(abs(b - c) - 1, 0) ** 2 / (b + c)  # Yates' correction, never past zero (b == c -> 0)
    return exact, float(chi2), float(sps.chi2.sf(chi2, df=1))


def _mean_diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(b, axis=axis) - np.mean(a, axis=axis)


def paired_bootstrap_ci(a: np.ndarray, b: np.ndarray, n_resamples: int = 2000,
                        seed: int = 0) -> tuple[float | None, float | None]:
    """95% percentile CI of mean(b) - mean(a) in points, resampling images (pairs kept together).

    Vectorized in batches rather than through `stats.bootstrap_metric`: ImageNet-size runs (50k images)
    take under a second this way instead of a few.
    """
    if len(a) < 2:
        return None, None
    res = sps.bootstrap((a, b), _mean_diff, paired=True, vectorized=True, n_resamples=n_resamples,
                        batch=max(1, 5_000_000 // len(a)), confidence_level=0.95, method="percentile",
                        rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return 100.0 * float(lo), 100.0 * float(hi)


def paired_outcomes(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Inner join on image_id (sorted, so results do not depend on row order); counts of unmatched images."""
    joined = a[["ok"]].rename(columns={"ok": "ok_a"}).join(b[["ok"]].rename(columns={"ok": "ok_b"}),
                                                           how="inner").sort_index()
    if "class" in a.columns:
        joined["class"] = a.loc[joined.index, "class"]
    elif "class" in b.columns:
        joined["class"] = b.loc[joined.index, "class"]
    return joined, len(a) - len(joined), len(b) - len(joined)


def compare_outcomes(
    a: pd.DataFrame, b: pd.DataFrame, metric: str = "", run_a: str = "A", run_b: str = "B",
    n_resamples: int = 2000, seed: int = 0,
) -> Comparison:
    """Paired difference B - A with bootstrap CI, McNemar tests, 2x2 table and per-class breakdown."""
    joined, only_a, only_b = paired_outcomes(a, b)
    if joined.empty:
        raise InputError(f"{run_a} and {run_b} share no image_id for {metric}; nothing to compare")
    xa = joined["ok_a"].to_numpy(dtype=float)
    xb = joined["ok_b"].to_numpy(dtype=float)
    lo, hi = paired_bootstrap_ci(xa, xb, n_resamples=n_resamples, seed=seed)
    ra, rb = joined["ok_a"].to_numpy(bool), joined["ok_b"].to_numpy(bool)
    n11, n10 = int((ra & rb).sum()), int((ra & ~rb).sum())
    n01, n00 = int((~ra & rb).sum()), int((~ra & ~rb).sum())
    exact, chi2, chi2_p = mcnemar(n10, n01)
    return Comparison(
        metric=metric, run_a=run_a, run_b=run_b,
        n_shared=len(joined), n_only_a=only_a, n_only_b=only_b,
        acc_a=100.0 * ra.mean(), acc_b=100.0 * rb.mean(), diff=100.0 * float(_mean_diff(xa, xb)),
        diff_ci_low=lo, diff_ci_high=hi, ci_method="paired bootstrap, percentile",
        both_right=n11, a_right_b_wrong=n10, a_wrong_b_right=n01, both_wrong=n00,
        mcnemar_exact_p=exact, mcnemar_chi2=chi2, mcnemar_chi2_p=chi2_p,
        per_class=per_class_table(joined),
    )


def per_class_table(joined: pd.DataFrame) -> pd.DataFrame:
    """Accuracy of A and B, their difference and discordant counts for each class (empty without `class`)."""
    if "class" not in joined.columns:
        return pd.DataFrame()
    ra, rb = joined["ok_a"].astype(bool), joined["ok_b"].astype(bool)
    parts = pd.DataFrame({"class": joined["class"].astype(str), "a": ra, "b": rb,
                          "a_only": ra & ~rb, "b_only": ~ra & rb})
    g = parts.groupby("class", sort=False).agg(
        n=("a", "size"), a=("a", "mean"), b=("b", "mean"), a_only=("a_only", "sum"), b_only=("b_only", "sum"))
    out = pd.DataFrame({
        "class": g.index.astype(str), "n": g["n"].to_numpy(), "a": 100.0 * g["a"].to_numpy(),
        "b": 100.0 * g["b"].to_numpy(), "diff": 100.0 * (g["b"] - g["a"]).to_numpy(),
        "a_only": g["a_only"].to_numpy(int), "b_only": g["b_only"].to_numpy(int),
    })
    out["mcnemar_exact_p"] = [mcnemar(x, y)[0] for x, y in zip(out["a_only"], out["b_only"], strict=True)]
    return out.sort_values("class", key=lambda s: s.map(natural_key)).reset_index(drop=True)


def metric_info(run_dir: str | Path, metric: str) -> tuple[str | None, str | None]:
    """(unit, direction) of `metric` as the run's metrics.json declares it; (None, None) when it does not."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None, None
    try:
        m = (json.loads(path.read_text(encoding="utf-8")).get("metrics") or {}).get(metric) or {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise InputError(f"{path}: not a readable metrics.json ({e})") from None
    return (m.get("unit") or None, m.get("direction") or None) if isinstance(m, dict) else (None, None)


def _unit_and_direction(run_a: str | Path, run_b: str | Path, metric: str) -> tuple[str, str]:
    """Both runs must agree; a paired hit/miss test only makes sense for a percentage."""
    (ua, da), (ub, db) = metric_info(run_a, metric), metric_info(run_b, metric)
    for name, x, y in (("unit", ua, ub), ("direction", da, db)):
        if x and y and x != y:
            raise InputError(f"{run_b}: {metric} has {name} {y!r} but {run_a} has {x!r}; not comparable")
    unit, direction = ua or ub, da or db
    if unit is None:  # runs written before units existed; a boolean per-sample column is a proportion anyway
        guess = infer_legacy(metric) or ("percent", "higher")
        unit, direction = guess[0], direction or guess[1]
    if unit != "percent":
        raise InputError(f"{run_a}: {metric} is a {unit} metric; compare tests per-sample hit/miss metrics "
                         f"(percentages), e.g. patch_hit.top1")
    return unit, direction or "higher"


def compare_runs(run_a: str | Path, run_b: str | Path, metric: str, n_resamples: int = 2000,
                 seed: int = 0) -> Comparison:
    """Load both runs' rows for `metric` and compare them image by image."""
    a = load_outcomes(run_a, metric)
    b = load_outcomes(run_b, metric)
    unit, direction = _unit_and_direction(run_a, run_b, metric)
    result = compare_outcomes(a, b, metric=metric, run_a=str(run_a), run_b=str(run_b),
                              n_resamples=n_resamples, seed=seed)
    result.unit, result.direction = unit, direction
    return result


def write_comparison(cmp: Comparison, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    ensure_writable_dir(out_dir)
    paths = {"csv": out_dir / "compare.csv", "md": out_dir / "compare.md", "json": out_dir / "compare.json"}
    with staged_writes() as w:
        w.text(paths["csv"], cmp.csv())
        w.text(paths["md"], cmp.markdown())
        w.text(paths["json"], json.dumps(cmp.to_json(), indent=2) + "\n")
    return paths
