"""Hand-made runs written through the real `write_run`, for the report/compare/gate tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lastvit_eval.report.write import write_run
from lastvit_eval.result import Metric, Result
from lastvit_eval.stats import proportion


def provenance(checkpoint: str, pooling: str, dataset: str = "imagenet-val-pib") -> dict:
    return {
        "model": {"name": checkpoint, "sha256": "0" * 64, "family": "torchvision", "arch": "vit_b_16"},
        "pooling": {"name": pooling, **({"k": 1} if pooling == "last" else {})},
        "dataset": {"name": dataset, "root": "/data/imagenet"},
        "transform": {"resize": 256, "crop": 224, "interpolation": "bilinear"},
        "dtype": "float32",
        "device": "cpu",
    }


def declared(m: Metric, unit: str = "percent", direction: str = "higher") -> Metric:
    """What the pipeline does with an evaluator's MetricInfo before writing."""
    m.unit, m.direction = unit, direction
    return m


def patch_hit_result(top1: np.ndarray, classes: list[str] | None = None,
                     ids: list[str] | None = None, fg_bg_gap: float | None = None) -> Result:
    """A patch_hit Result whose rows follow the convention (column `top1` for metric patch_hit.top1)."""
    top1 = np.asarray(top1, dtype=bool)
    n = top1.size
    ids = ids or [f"ILSVRC2012_val_{i:08d}" for i in range(1, n + 1)]
    classes = classes or ["n01440764"] * n
    top5 = top1 | (np.arange(n) % 3 == 0)
    rows = pd.DataFrame({
        "image_id": ids, "class": classes, "label": [0] * n, "top_patch": np.arange(n) % 196,
        "top_row": (np.arange(n) % 196) // 14, "top_col": np.arange(n) % 14,
        "score": np.linspace(0.1, 0.9, n),
        "top1": top1, "top5": top5,
    })
    metrics = {"patch_hit.top1": declared(proportion(top1)), "patch_hit.top5": declared(proportion(top5))}
    if fg_bg_gap is not None:
        metrics["patch_hit.fg_bg_gap"] = Metric(fg_bg_gap, fg_bg_gap - 0.01, fg_bg_gap + 0.01, n, "bootstrap",
                                                unit="cosine", direction="higher")
    return Result(evaluator="patch_hit", metrics=metrics, rows=rows, info={"kept": n, "dropped": 0})


def knn_result(values: dict[int, float], n: int = 1000) -> Result:
    metrics = {f"knn.k{k}.top1": Metric(v, v - 1.0, v + 1.0, n, "wilson", "percent", "higher")
               for k, v in values.items()}
    return Result(evaluator="knn", metrics=metrics, info={"temperature": 0.07})


def make_run(root: Path, name: str, checkpoint: str, pooling: str, results: list[Result],
             dataset: str = "imagenet-val-pib") -> Path:
    out = root / name
    write_run(out, results, provenance(checkpoint, pooling, dataset))
    return out


def strip_units(run_dir: Path) -> None:
    """Make a run look written before units existed (schema_version 1, no unit/direction keys)."""
    path = run_dir / "metrics.json"
    record = json.loads(path.read_text())
    record["schema_version"] = 1
    for m in record["metrics"].values():
        m.pop("unit", None)
        m.pop("direction", None)
    path.write_text(json.dumps(record, indent=2))
