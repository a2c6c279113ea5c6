"""Units and directions of metrics as the report path reads them: display digits, legacy inference.

Evaluators declare a unit and a direction for every metric they write (`evaluators.base.MetricInfo`);
records written before units existed (schema_version 1 without a `unit`) have neither, and only for those
the report may infer them from the metric key. The inference covers the keys the toolkit wrote then;
anything else stays unknown rather than being read as a percentage.
"""

from __future__ import annotations

import re

import pandas as pd

UNITS = ("percent", "cosine", "ratio", "count", "seconds", "score")
DIRECTIONS = ("higher", "lower", "none")

# digits people see (Markdown, console); CSV keeps 4 decimals for every unit
DISPLAY_DIGITS = {"percent": 2, "cosine": 3, "ratio": 3, "count": 0, "seconds": 2, "score": 3}
SYMBOL = {"percent": "%", "cosine": "cos", "ratio": "ratio", "count": "count", "seconds": "s", "score": "score"}

# (pattern on the part after the namespace, unit, direction): every key a schema-1 toolkit wrote
_LEGACY = [
    (re.compile(r"(.+\.)?fg_bg_gap"), "cosine", "higher"),
    (re.compile(r"(.+\.)?(top\d+|mean_per_class_recall|fg_above_bg|corloc|miou)"), "percent", "higher"),
]


def natural_key(name: str) -> tuple:
    """Sort `knn.k10.top1` before `knn.k20.top1` before `knn.k100.top1` (numbers compared as numbers)."""
    return tuple((0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", str(name)))


def infer_legacy(metric: str) -> tuple[str, str] | None:
    """(unit, direction) of a key written before units existed, or None when the key is not one we know."""
    rest = metric.split(".", 1)[1] if "." in metric else metric
    for pattern, unit, direction in _LEGACY:
        if pattern.fullmatch(rest):
            return unit, direction
    return None


def blank(v) -> bool:
    """None, NaN, pandas' NA or an empty string: a field the record or CSV left empty."""
    return v is None or v is pd.NA or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def display_unit(unit, metric: str) -> str | None:
    """The declared unit, else the legacy inference (for display only; the gate says when it infers)."""
    if not blank(unit):
        return str(unit)
    guess = infer_legacy(metric)
    return guess[0] if guess else None


def digits_for(unit, metric: str = "") -> int:
    return DISPLAY_DIGITS.get(display_unit(unit, metric) or "", 2)
