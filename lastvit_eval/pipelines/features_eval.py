"""Recognition evaluators on feature files written by `extract` (no model, no images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..evaluators import get as get_evaluator
from ..features_io import FeatureSet, load_features
from ..report.write import write_run
from ..result import Result


def _test_labels(train: FeatureSet, test: FeatureSet, test_path: Path) -> np.ndarray:
    """Map test labels into the training class order by class name when both files name classes."""
    if not (train.classes and test.classes) or train.classes == test.classes:
        return test.labels
    idx = {c: i for i, c in enumerate(train.classes)}
    unknown = sorted({test.classes[lab] for lab in test.labels if lab >= 0 and test.classes[lab] not in idx})
    if unknown:
        raise InputError(f"{test_path}: classes not present in the training features: {', '.join(unknown[:5])}")
    return np.array([idx[test.classes[lab]] if lab >= 0 else -1 for lab in test.labels], dtype=np.int64)


def evaluate_feature_files(
    evaluators: list[str],
    train_path: Path | None,
    test_path: Path,
    poolings: list[str] | None,
    out_root: Path,
    ks: tuple[int, ...] = (10, 20, 100, 200),
    temperature: float = 0.07,
    seed: int = 0,
    probe: dict | None = None,
) -> dict[str, tuple[list[Result], dict]]:
    test = load_features(test_path)
    train = load_features(train_path) if train_path is not None else None
    if any(e in ("knn", "linear-probe") for e in evaluators) and train is None:
        raise InputError("knn / linear-probe on feature files need --train-features as well as --test-features")
    if (test.labels < 0).any():
        raise InputError(f"{test_path}: {int((test.labels < 0).sum())} images have no label")
    available = sorted(k.split("/", 1)[1] for k in test.arrays if k.startswith(("pooled/", "logits/")))
    names = poolings or sorted(set(available))
    if not names:
        raise InputError(f"{test_path}: holds no pooled features or logits")
    y_test = _test_labels(train, test, test_path) if train is not None else test.labels
    n_classes = len(train.classes) if train is not None and train.classes else None
    out: dict[str, tuple[list[Result], dict]] = {}
    for name in names:
        results = []
        for ev in evaluators:
            fn = get_evaluator(ev).fn
            if ev == "knn":
                results.append(fn(train.get(f"pooled/{name}", str(train_path)), train.labels,
                                  test.get(f"pooled/{name}", str(test_path)), y_test, test_ids=test.image_ids,
                                  ks=ks, temperature=temperature, num_classes=n_classes))
            elif ev == "linear-probe":
                results.append(fn(train.get(f"pooled/{name}", str(train_path)), train.labels,
                                  test.get(f"pooled/{name}", str(test_path)), y_test, test_ids=test.image_ids,
                                  num_classes=n_classes, seed=seed, **(probe or {})))
            elif ev == "classify":
                results.append(fn(test.get(f"logits/{name}", str(test_path)), y_test, test_ids=test.image_ids,
                                  seed=seed))
            else:
                raise InputError(f"{ev}: not available on feature files (use knn, linear-probe or classify)")
        meta = test.meta
        provenance = {
            "model": meta.get("model", {}),
            "pooling": {"name": name, **meta.get("poolings", {}).get(name, {})},
            "transform": meta.get("transform", {}),
            "dataset": {**meta.get("dataset", {}), "test_features": str(test_path),
                        "train_features": str(train_path) if train_path else None},
            "dtype": meta.get("engine", {}).get("dtype"),
            "device": meta.get("device"),
            "evaluators": evaluators,
        }
        run_dir = out_root / name if len(names) > 1 else out_root
        out[name] = (results, write_run(run_dir, results, provenance, run_name=f"{out_root.name}-{name}"))
    return out
