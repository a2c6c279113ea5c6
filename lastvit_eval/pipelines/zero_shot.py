"""zero-shot end to end: CLIP model -> text classifier (cached) -> one forward pass -> evaluator -> results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.images import index_images
from ..data.labels import Labels, resolve_labels
from ..engine.device import EngineSpec, resolve_device
from ..engine.extract import TapRequest, extract
from ..errors import InputError
from ..evaluators import zero_shot
from ..models import LoadedModel
from ..models.clip_text import Prompts, text_classifier
from ..pooling import PoolingSpec
from ..report.write import write_run
from ..result import Result


@dataclass
class ZeroShotOutput:
    result: Result
    record: dict
    out_dir: Path


def imagenet_indices(labels: Labels, root: Path) -> list[int]:
    """Dataset class -> ImageNet-1k index (timm's synset list), so a subset of class folders still lines up."""
    from timm.data import ImageNetInfo

    synsets = {w: i for i, w in enumerate(ImageNetInfo().label_names())}
    out = []
    for c in labels.classes:
        if c in synsets:
            out.append(synsets[c])
        elif c.isdigit() and int(c) < len(synsets):
            out.append(int(c))
        else:
            raise InputError(f"{root}: class {c!r} is not an ImageNet-1k wnid or index; pass --classnames FILE "
                             "(one name per line, in label order) for other datasets")
    return out


def run_zero_shot(
    model: LoadedModel,
    root: Path,
    split: str,
    prompts: Prompts,
    imagenet_names: bool,
    pooling: PoolingSpec,
    engine: EngineSpec,
    out_dir: Path,
    progress: bool = True,
    limit: int | None = None,
    use_cache: bool = True,
) -> ZeroShotOutput:
    if getattr(model.backbone, "clip", None) is None:
        raise InputError(f"{model.source}: zero-shot needs a CLIP checkpoint with a text tower (family openclip); "
                         f"this is a {model.arch.family} model")
    records = index_images(root, split)
    if limit is not None:
        records = records[:limit]
    labels = resolve_labels(root, records, None)
    if not labels.classes:
        raise InputError(f"{root}: no class labels found (class folders or meta/val.txt)")
    if imagenet_names:
        mapping = imagenet_indices(labels, root)
        y = np.asarray([mapping[i] if i >= 0 else -1 for i in labels.labels], dtype=np.int64)
    else:
        if len(labels.classes) != len(prompts.classnames):
            raise InputError(f"{root}: the dataset has {len(labels.classes)} classes ({labels.source}) but "
                             f"--classnames lists {len(prompts.classnames)}")
        y = np.asarray(labels.labels, dtype=np.int64)
    unknown = [r.image_id for r, v in zip(records, y, strict=True) if v < 0]
    keep = np.flatnonzero(y >= 0)
    if keep.size == 0:
        raise InputError(f"{root}: no image has a known label")
    device = resolve_device(engine.device)
    weights, text_info = text_classifier(model, prompts, device, use_cache=use_cache, progress=progress)
    paths = [records[i].path for i in keep]
    feats = extract(model, paths, TapRequest((pooling,), frozenset({"embedding"})), engine, progress=progress,
                    description=f"zero-shot {pooling.name}")
    if feats.index.size == 0:
        raise InputError(f"{root}: every selected image failed to decode")
    done = keep[feats.index]
    result = zero_shot.evaluate(feats.arrays[f"embedding/{pooling.name}"], y[done], weights,
                                list(prompts.classnames), [records[i].image_id for i in done])
    result.info.update({
        "found": len(records),
        "evaluated": int(done.size),
        "unlabelled_images": len(unknown),
        "skipped_images": [p for p, _ in feats.bad],
        "text_classifier": text_info,
        "images_per_second": round(feats.images_per_second, 2),
        "forward_seconds": round(feats.seconds, 3),
    })
    provenance = {
        "model": model.provenance(),
        "pooling": {"name": pooling.name, **pooling.to_dict()},
        "transform": model.transform.to_dict(),
        "dataset": {"name": Path(root).name, "root": str(root), "split": split, "labels": labels.source,
                    "classes": len(prompts.classnames), "prompts": prompts.source},
        "engine": engine.to_dict(),
        "dtype": engine.dtype,
        "device": feats.device,
    }
    record = write_run(out_dir, [result], provenance)
    return ZeroShotOutput(result=result, record=record, out_dir=out_dir)
