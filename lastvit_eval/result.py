"""The one shape every evaluator returns: metrics with confidence intervals plus per-sample rows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

SCHEMA_VERSION = 2  # 2: every metric carries unit and direction


@dataclass
class Metric:
    """A scalar with an optional 95% confidence interval; percentages are stored as percentages."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    ci_method: str | None = None
    unit: str | None = None  # percent | cosine | ratio | count | seconds | score (set from the evaluator's declaration)
    direction: str | None = None  # higher | lower | none: which way is better

    def to_dict(self) -> dict:
        return {
            "value": _clean(self.value),
            "ci_low": _clean(self.ci_low),
            "ci_high": _clean(self.ci_high),
            "n": self.n,
            "ci_method": self.ci_method,
            "unit": self.unit,
            "direction": self.direction,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Metric:
        return cls(
            value=float("nan") if d.get("value") is None else float(d["value"]),
            ci_low=d.get("ci_low"),
            ci_high=d.get("ci_high"),
            n=d.get("n"),
            ci_method=d.get("ci_method"),
            unit=d.get("unit"),
            direction=d.get("direction"),
        )


def _clean(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


@dataclass
class Result:
    """What an evaluator returns. Metric keys are namespaced: `patch_hit.top1`, `knn.k20.top1`.

    `rows` holds one row per sample, `image_id` first. Convention that paired comparison relies on:
    for every proportion metric `<ns>.<rest>` the rows carry a boolean column named `<rest>`
    (e.g. `patch_hit.top1` -> column `top1`; `knn.k20.top1` -> column `k20.top1`).
    `tables` holds extra breakdowns (e.g. `per_class`), `info` counts and chosen hyperparameters.
    """

    evaluator: str
    metrics: dict[str, Metric]
    rows: pd.DataFrame | None = None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def metrics_frame(self) -> pd.DataFrame:
        records = [{"metric": k, **m.to_dict()} for k, m in self.metrics.items()]
        return pd.DataFrame.from_records(
            records, columns=["metric", "value", "ci_low", "ci_high", "n", "ci_method", "unit", "direction"]
        )
