"""patch-hit end to end: model -> PiB data -> one forward pass -> evaluator -> results/<run>/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.filters import FilterSpec, summarize
from ..data.pib import PibData, load_pib_data, targets_for
from ..engine.cache import CacheSpec
from ..engine.device import EngineSpec
from ..engine.extract import TapRequest, extract
from ..errors import InputError
from ..evaluators import patch_hit
from ..geometry import HitRule
from ..models import LoadedModel
from ..pooling import PoolingSpec
from ..report.write import write_run
from ..result import Result


@dataclass
class PatchHitOutput:
    result: Result
    record: dict
    out_dir: Path


def mark_outside(data: PibData, targets: np.ndarray, masks: bool) -> np.ndarray:
    """Record images whose object misses the crop as dropped; returns the indices of the others."""
    inside = targets.any(axis=1)
    outside = [r.image_id for r, ok in zip(data.records, inside, strict=True) if not ok]
    if outside:
        data.dropped["object outside the crop" if masks else "box outside the crop"] = outside
    return np.flatnonzero(inside)


def evaluate_pib(data: PibData, targets: np.ndarray, rows: np.ndarray, scores: np.ndarray, grid) -> Result:
    """patch-hit for the records `rows` (indices into data.records) with their scores, plus the counts
    of what was found, filtered and dropped, and the dropped-image table."""
    result = patch_hit.evaluate(
        scores,
        targets[rows],
        [data.records[i].image_id for i in rows],
        grid,
        classes=[data.class_of(i) for i in rows],
        labels=np.asarray([data.labels[i] for i in rows]),
    )
    result.info.update({"found": data.report["found"], "kept_after_filter": data.report["kept"],
                        "evaluated": int(len(rows)), "dropped": summarize(data.dropped)})
    if data.dropped:
        result.tables["dropped"] = pd.DataFrame(
            [(reason, i) for reason, ids in data.dropped.items() for i in ids], columns=["reason", "image_id"]
        )
    return result


def run_patch_hit(
    model: LoadedModel,
    root: Path,
    boxes: Path | None,
    filt: FilterSpec,
    pooling: PoolingSpec,
    rule: HitRule,
    engine: EngineSpec,
    out_dir: Path,
    progress: bool = True,
    limit: int | None = None,
    masks: Path | None = None,
    fg_fraction: float = 0.5,
    cache: CacheSpec | None = None,
) -> PatchHitOutput | None:
    """Returns None on torch.distributed ranks other than 0 (they only extract their shards)."""
    data = load_pib_data(root, boxes, filt, engine.on_bad_image, masks=masks)
    t = model.transform
    targets = targets_for(data, t.resize, t.crop, model.arch.patch_size, rule, fg_fraction)
    keep = mark_outside(data, targets, masks is not None)
    if limit is not None:
        keep = keep[:limit]
    if keep.size == 0:
        raise InputError(f"{root}: no image has a box inside the {t.crop}x{t.crop} center crop")
    paths = [data.records[i].path for i in keep]
    feats = extract(model, paths, TapRequest((pooling,), frozenset({"patch_scores"})), engine, progress=progress,
                    description=f"patch-hit {pooling.name}", cache=cache)
    if not feats.assembled:
        return None
    done = keep[feats.index]
    bad_ids = {Path(p).stem for p, _ in feats.bad}
    if bad_ids:
        data.dropped["unreadable image"] = sorted(set(data.dropped.get("unreadable image", [])) | bad_ids)
    if done.size == 0:
        raise InputError(f"{root}: every selected image failed to decode")
    result = evaluate_pib(data, targets, done, feats.arrays[f"patch_scores/{pooling.name}"], model.arch.grid)
    result.info.update(
        {
            "skipped_images": [p for p, _ in feats.bad],
            "hit_rule": rule,
            "images_per_second": round(feats.images_per_second, 2),
            "forward_seconds": round(feats.seconds, 3),
            "compute_seconds": round(feats.compute_seconds, 3),
            "cache": feats.cache,
            "engine": feats.engine_info,
        }
    )
    provenance = {
        "model": model.provenance(),
        "pooling": {"name": pooling.name, **pooling.to_dict()},
        "transform": t.to_dict(),
        "dataset": {
            "name": Path(root).name,
            "root": str(root),
            "boxes": data.boxes_source,
            "labels": data.report["labels"],
            "filter": filt.to_dict(),
            "hit_rule": rule,
            "masks": str(masks) if masks else None,
            "fg_fraction": fg_fraction if masks else None,
        },
        "engine": engine.to_dict(),
        "dtype": engine.dtype,
        "device": feats.device,
    }
    record = write_run(out_dir, [result], provenance)
    return PatchHitOutput(result=result, record=record, out_dir=out_dir)
