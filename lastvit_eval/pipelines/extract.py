"""Features of a labelled image split: index -> labels -> one forward pass -> FeatureSet."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.images import index_images
from ..data.labels import resolve_labels
from ..engine.device import EngineSpec
from ..engine.extract import TapRequest, extract
from ..errors import InputError
from ..features_io import FeatureSet
from ..models import LoadedModel
from ..pooling import PoolingSpec


def default_taps(model: LoadedModel, patch_tokens: bool = False) -> frozenset[str]:
    """Pooled features always; embeddings only with a projection, logits only with a head."""
    taps = {"pooled"}
    if model.arch.embed_dim is not None:
        taps.add("embedding")
    if model.arch.num_classes is not None:
        taps.add("logits")
    if patch_tokens:
        taps.add("patch_tokens")
    return frozenset(taps)


def extract_split(
    model: LoadedModel,
    root: Path,
    split: str,
    poolings: tuple[PoolingSpec, ...],
    taps: frozenset[str],
    engine: EngineSpec,
    progress: bool = True,
    limit: int | None = None,
) -> FeatureSet:
    records = index_images(root, split)
    if limit is not None:
        records = records[:limit]
    labels = resolve_labels(root, records, None)
    feats = extract(model, [r.path for r in records], TapRequest(poolings, taps), engine, progress=progress,
                    description=f"extract {split}")
    if feats.index.size == 0:
        raise InputError(f"{root}: every image of split {split!r} failed to decode")
    done = [records[i] for i in feats.index]
    meta = {
        "model": model.provenance(),
        "transform": model.transform.to_dict(),
        "poolings": {p.name: p.to_dict() for p in poolings},
        "dataset": {"name": Path(root).name, "root": str(root), "split": split, "labels": labels.source,
                    "images_found": len(records)},
        "engine": engine.to_dict(),
        "device": feats.device,
        "skipped_images": [p for p, _ in feats.bad],
        "images_per_second": round(feats.images_per_second, 2),
    }
    return FeatureSet(
        arrays=feats.arrays,
        labels=np.asarray([labels.labels[i] for i in feats.index], dtype=np.int64),
        image_ids=[r.image_id for r in done],
        classes=list(labels.classes),
        meta=meta,
    )
