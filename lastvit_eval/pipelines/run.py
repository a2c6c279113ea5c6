"""Several evaluators over ONE forward pass per image set (val, and train for k-NN / linear probe).

The union of the taps every requested evaluator declares is extracted once (through the feature cache
when one is given); each evaluator then receives only arrays and annotations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.filters import FilterSpec
from ..data.pib import load_pib_data, targets_for
from ..data.recognition import LabeledImages, class_list
from ..engine.device import EngineSpec
from ..engine.extract import Features, TapRequest, extract
from ..errors import InputError
from ..evaluators import get as get_evaluator
from ..geometry import HitRule
from ..models import LoadedModel
from ..pooling import PoolingSpec
from ..report.write import write_run
from ..result import Result

RECOGNITION = ("knn", "linear-probe")


@dataclass
class PibOptions:
    root: Path
    boxes: Path | None = None
    filt: FilterSpec = field(default_factory=FilterSpec)
    rule: HitRule = "any"
    masks: Path | None = None
    fg_fraction: float = 0.5


@dataclass
class RunConfig:
    evaluators: list[str]
    poolings: list[PoolingSpec]
    val: LabeledImages
    train: LabeledImages | None = None
    pib: PibOptions | None = None
    ks: tuple[int, ...] = (10, 20, 100, 200)
    temperature: float = 0.07
    probe: dict = field(default_factory=dict)  # keyword arguments for the linear probe (weight_decays, solver, ...)
    seed: int = 0
    dataset_name: str = "dataset"


def _extract(model, paths, taps, poolings, engine, cache, progress, description) -> Features:
    kwargs = {"cache": cache} if cache is not None else {}
    return extract(model, paths, TapRequest(tuple(poolings), frozenset(taps)), engine, progress=progress,
                   description=description, **kwargs)


def run_evaluators(
    model: LoadedModel,
    cfg: RunConfig,
    engine: EngineSpec,
    out_root: Path,
    cache=None,
    progress: bool = True,
) -> dict[str, tuple[list[Result], dict]]:
    """Returns, per pooling name, the results and the written record (results/<run>/<pooling>/)."""
    infos = [get_evaluator(name) for name in cfg.evaluators]
    taps = {t for info in infos for t in info.taps}
    if "classify" in cfg.evaluators and model.arch.num_classes is None:
        raise InputError(f"{model.source}: classify needs a classification head and this checkpoint has none")
    if any(e in RECOGNITION for e in cfg.evaluators) and cfg.train is None:
        raise InputError("knn / linear-probe need a training set (--train, or an ImageNet root with train/)")
    classes = class_list(cfg.train) if cfg.train is not None else sorted(set(cfg.val.names))
    val_labels = cfg.val.labels(classes)
    val_feats = _extract(model, cfg.val.paths, taps, cfg.poolings, engine, cache, progress, "val")
    done = val_feats.index
    train_feats = train_labels = None
    if cfg.train is not None and any(e in RECOGNITION for e in cfg.evaluators):
        train_feats = _extract(model, cfg.train.paths, {"pooled"}, cfg.poolings, engine, cache, progress, "train")
        train_labels = cfg.train.labels(classes)[train_feats.index]
    if not val_feats.assembled or (train_feats is not None and not train_feats.assembled):
        return {}  # a torch.distributed rank other than 0
    pib = pib_targets = None
    if "patch-hit" in cfg.evaluators:
        if cfg.pib is None:
            raise InputError("patch-hit needs boxes or masks (an ImageNet root with boxes, --boxes or --masks)")
        pib = load_pib_data(cfg.pib.root, cfg.pib.boxes, cfg.pib.filt, engine.on_bad_image, masks=cfg.pib.masks)
        t = model.transform
        pib_targets = targets_for(pib, t.resize, t.crop, model.arch.patch_size, cfg.pib.rule, cfg.pib.fg_fraction)
    ids = [cfg.val.ids[i] for i in done]
    out: dict[str, tuple[list[Result], dict]] = {}
    for spec in cfg.poolings:
        results: list[Result] = []
        for name in cfg.evaluators:
            if name == "patch-hit":
                results.append(_patch_hit(model, spec, val_feats, cfg.val, pib, pib_targets))
            elif name == "knn":
                results.append(get_evaluator("knn").fn(
                    train_feats.arrays[f"pooled/{spec.name}"], train_labels, val_feats.arrays[f"pooled/{spec.name}"],
                    val_labels[done], test_ids=ids, ks=cfg.ks, temperature=cfg.temperature, num_classes=len(classes),
                    device=engine.device if engine.device != "auto" else None))
            elif name == "linear-probe":
                results.append(get_evaluator("linear-probe").fn(
                    train_feats.arrays[f"pooled/{spec.name}"], train_labels, val_feats.arrays[f"pooled/{spec.name}"],
                    val_labels[done], test_ids=ids, num_classes=len(classes), seed=cfg.seed,
                    device=engine.device if engine.device != "auto" else None, **cfg.probe))
            elif name == "classify":
                logits = val_feats.arrays[f"logits/{spec.name}"]
                if logits.shape[1] < len(classes):
                    raise InputError(f"{model.source}: head has {logits.shape[1]} classes, the dataset {len(classes)}")
                results.append(get_evaluator("classify").fn(logits, val_labels[done], test_ids=ids, seed=cfg.seed))
            else:
                raise InputError(f"run: evaluator {name!r} is not supported by `run` (use its own command)")
        for r in results:
            r.info.setdefault("forward", {"val_images_per_second": round(val_feats.images_per_second, 2),
                                          "skipped_images": [p for p, _ in val_feats.bad]})
        provenance = {
            "model": model.provenance(),
            "pooling": {"name": spec.name, **spec.to_dict()},
            "transform": model.transform.to_dict(),
            "dataset": {"name": cfg.dataset_name, "val": cfg.val.source,
                        "train": cfg.train.source if cfg.train is not None else None,
                        "classes": len(classes),
                        **({"boxes": pib.boxes_source, "filter": cfg.pib.filt.to_dict(), "hit_rule": cfg.pib.rule}
                           if pib is not None and cfg.pib is not None else {})},
            "engine": engine.to_dict(),
            "dtype": engine.dtype,
            "device": val_feats.device,
            "evaluators": cfg.evaluators,
        }
        run_dir = out_root / spec.name if len(cfg.poolings) > 1 else out_root
        out[spec.name] = (results, write_run(run_dir, results, provenance, run_name=f"{out_root.name}-{spec.name}"))
    return out


def _patch_hit(model, spec, feats: Features, val: LabeledImages, pib, targets) -> Result:
    """patch-hit on the PiB records that the val pass processed (joined on image id)."""
    from .patch_hit import evaluate_pib, mark_outside

    pos = {val.ids[i]: row for row, i in enumerate(feats.index)}
    inside = mark_outside(pib, targets, pib.masks is not None)
    keep = [(j, pos[pib.records[j].image_id]) for j in inside if pib.records[j].image_id in pos]
    if not keep:
        raise InputError("patch-hit: no evaluated image has a box inside the crop")
    j_idx = np.array([j for j, _ in keep])
    rows = np.array([r for _, r in keep])
    return evaluate_pib(pib, targets, j_idx, feats.arrays[f"patch_scores/{spec.name}"][rows], model.arch.grid)
