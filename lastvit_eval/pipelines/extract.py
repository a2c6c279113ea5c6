"""Features of a labelled image split, through the feature store, into a FeatureSet for `extract`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..classmap import declared_labels
from ..data.images import index_images
from ..data.labels import resolve_labels
from ..engine.device import EngineSpec
from ..engine.extract import extract
from ..engine.store import StoreSpec
from ..engine.taps import TapRequest
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
    store: StoreSpec | None = None,
) -> FeatureSet | None:
    """None on torch.distributed ranks other than 0."""
    records = index_images(root, split)
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit {limit}: must be a positive number of images")
        records = records[:limit]
    labels = resolve_labels(root, records, None)
    feats = extract(model, [r.path for r in records], TapRequest(poolings, taps), engine, store=store,
                    progress=progress, description=f"{model.name} {split}", widen=True)
    if not feats.assembled:
        return None
    if feats.index.size == 0:
        raise InputError(f"{root}: every image of split {split!r} failed to decode")
    done = [records[i] for i in feats.index]
    meta = {
        "model": model.provenance(),
        "transform": model.transform.to_dict(),
        "poolings": {p.name: p.to_dict() for p in poolings},
        "dataset": {"name": Path(root).name, "root": str(root), "split": split, "labels": labels.source,
                    "images_found": len(records), "declared_labels": declared_labels(root)},
        "engine": engine.to_dict(),
        "device": feats.device,
        "skipped_images": [p for p, _ in feats.bad],
        "images_per_second": round(feats.images_per_second, 2),
        "store": feats.store,
    }
    return FeatureSet(
        arrays=feats.arrays,
        labels=np.asarray([labels.labels[i] for i in feats.index], dtype=np.int64),
        image_ids=[r.image_id for r in done],
        classes=list(labels.classes),
        meta=meta,
    )
