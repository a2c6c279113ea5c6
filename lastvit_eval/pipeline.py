"""Execute a checked plan: claim the output folder, one extraction per split, every evaluator, write.

The union of the taps the evaluators declare is extracted once per split through the feature store
(test: the union of the images every evaluator selected; train: all of it), then each evaluator gets,
per pooling, only its rows of those arrays. Dispatch is the registry's: nothing here names an evaluator.

When the test split has a single evaluator and it defines `reduce` (`evaluators/base.py`), extraction applies
it chunk by chunk and keeps only its small per-image outputs (`_Reducer`): CorLoc at full resolution never
holds a split's ragged keys, only one chunk's.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .engine import distributed
from .engine.extract import Features, extract
from .engine.taps import POOLING_FREE, TapRequest
from .errors import InputError
from .evaluators.base import Evaluator, Inputs, SplitInputs
from .plan import Plan, describe
from .report.outdir import claim_output_dir, release_output_dir
from .report.write import atomic_write_text, write_run
from .result import Result

BYTES_PER_IMAGE_GUESS = 64 * 1024  # widened taps of a ViT-B/16 image: pooled, logits, scores x 3 poolings


@dataclass
class RunOutput:
    plan: Plan
    out_dir: Path
    results: dict[str, list[Result]] = field(default_factory=dict)  # pooling name -> results
    records: dict[str, dict] = field(default_factory=dict)
    extraction: dict[str, dict] = field(default_factory=dict)


def _check_disk(plan: Plan, images: int) -> None:
    store = plan.request.store
    if not store.enabled or images == 0:
        return
    root = store.root
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = images * BYTES_PER_IMAGE_GUESS
    if free < need:
        raise InputError(f"feature store {root}: {free / 2**20:.0f} MiB free, about {need / 2**20:.0f} MiB needed "
                         f"for {images} images; free space or choose another --cache-dir")


def _split_features(plan: Plan, role: str, positions: np.ndarray) -> tuple[Features, list[str]]:
    """Arrays for the split's rows `positions` (from images through the store, or from a feature file)."""
    split = plan.test if role == "test" else plan.train
    ids = [split.ids[i] for i in positions]
    if plan.model is None:
        fs = split.features
        whole = len(positions) == len(split.ids) and bool((positions == np.arange(len(positions))).all())
        arrays = {k: (v if whole else np.asarray(v)[positions]) for k, v in fs.arrays.items()}  # no copy of a bank
        return Features(index=np.arange(len(positions)), arrays=arrays, device="features file"), ids
    request = TapRequest(plan.poolings, plan.taps(role))
    reducer = _reducer(plan, ids) if role == "test" else None
    feats = extract(plan.model, [split.paths[i] for i in positions], request, plan.engine,
                    store=plan.request.store, progress=plan.request.progress,
                    description=f"{plan.model.name} {role}", widen=role == "test", reduce=reducer)
    if reducer is not None:
        feats.pooling_free = reducer.names
    return feats, ids


class _Reducer:
    """The evaluator's `reduce` over extraction's tap keys: called once when it reads pooling-free taps only
    (outputs keep their names), else once per pooling on that pooling's taps (outputs named `name/pooling`)."""

    def __init__(self, ev: Evaluator, plan: Plan, ids: list[str]) -> None:
        self.ev, self.ids = ev, ids
        self.poolings = [None] if ev.taps <= POOLING_FREE else [p.name for p in plan.poolings]
        self.names: set[str] = set()  # pooling-free outputs

    def __call__(self, arrays: dict[str, np.ndarray], positions: np.ndarray) -> dict[str, np.ndarray]:
        ids = [self.ids[i] for i in positions]
        out = {}
        for pooling in self.poolings:
            taps = {}
            for key, v in arrays.items():
                tap, _, name = key.partition("/")
                if tap in self.ev.taps and ((not name and tap in POOLING_FREE) or (pooling and name == pooling)):
                    taps[tap] = v
            if not taps:  # e.g. votes of a non-LAST pooling: evaluate reports the missing tap
                continue
            for k, v in self.ev.reduce(taps, ids).items():
                if pooling is None:
                    self.names.add(k)
                out[k if pooling is None else f"{k}/{pooling}"] = v
        return out


def _reducer(plan: Plan, ids: list[str]) -> _Reducer | None:
    """A reducer when one evaluator reads the test taps and defines `reduce` (shared taps stay whole)."""
    users = plan.uses("test")
    if len(users) != 1 or type(users[0]).reduce is Evaluator.reduce:
        return None
    return _Reducer(users[0], plan, ids)


def _inputs_for(feats: Features, ids: list[str], labels: np.ndarray, pooling: str,
                rows: np.ndarray | None) -> SplitInputs:
    arrays = {}
    for key, v in feats.arrays.items():
        tap, _, name = key.partition("/")
        if (tap in POOLING_FREE or tap in feats.pooling_free) and not name:
            arrays[tap] = v if rows is None else v[rows]
        elif name == pooling:
            arrays[tap] = v if rows is None else v[rows]
    done_ids = [ids[i] for i in feats.index]
    done_labels = labels[feats.index]
    if rows is not None:
        done_ids = [done_ids[r] for r in rows]
        done_labels = done_labels[rows]
    return SplitInputs(done_ids, done_labels, arrays)


def execute(plan: Plan) -> RunOutput | None:
    """Run the plan; returns None on torch.distributed ranks other than 0 (they only extract)."""
    main = distributed.current().is_main
    positions = plan.test_positions()
    if main:
        _check_disk(plan, len(positions) + (plan.train.size if plan.train is not None and plan.uses("train") else 0))
        claim_output_dir(plan.output, plan.request.overwrite)
    try:
        return _execute(plan, positions, main)
    finally:
        if main:
            release_output_dir(plan.output)


def _execute(plan: Plan, positions: np.ndarray, main: bool) -> RunOutput | None:
    if _dense_only(plan):  # no tap to extract: the dense forward below is the only pass over the images
        test_feats = Features(index=np.arange(len(positions)), arrays={}, device="dense forward")
        test_ids = [plan.test.ids[i] for i in positions]
    else:
        test_feats, test_ids = _split_features(plan, "test", positions)
    train_feats = train_ids = None
    if plan.train is not None and plan.uses("train"):
        train_feats, train_ids = _split_features(plan, "train", np.arange(plan.train.size))
    if not test_feats.assembled or (train_feats is not None and not train_feats.assembled):
        return None
    if test_feats.index.size == 0:
        raise InputError(f"{plan.test.source}: every selected image failed to decode")
    if plan.text is not None:
        _build_text(plan)
    dense = _dense_outputs(plan)
    test_labels = plan.labels(plan.test)[positions]
    skipped_ids = {Path(p).stem for p, _ in test_feats.bad}
    row_of = {test_ids[i]: r for r, i in enumerate(test_feats.index)}
    out = RunOutput(plan=plan, out_dir=plan.output)
    out.extraction = {"test": _extraction_info(test_feats)}
    for name, d in dense.items():
        out.extraction[f"dense:{name}"] = d.info()
    if train_feats is not None:
        out.extraction["train"] = _extraction_info(train_feats)
        train_labels = plan.labels(plan.train)
    for spec in plan.poolings:
        results: list[Result] = []
        for ev in plan.evaluators:
            wanted = [plan.test.ids[i] for i in plan.selections[ev.name]]
            rows = np.array([row_of[i] for i in wanted if i in row_of], dtype=np.int64)
            test_in = _inputs_for(test_feats, test_ids, test_labels, spec.name, rows)
            train_in = None
            if "train" in ev.splits:
                train_in = _inputs_for(train_feats, train_ids, train_labels, spec.name, None)
            inputs = Inputs(pooling=spec, test=test_in, train=train_in, classes=plan.classes, plan=plan,
                            skipped=sorted(skipped_ids & set(wanted)), dense=dense.get(ev.name))
            result = ev.evaluate(inputs)
            result.evaluator = ev.name
            for key, metric in result.metrics.items():
                info = ev.metric_info(key)
                metric.unit, metric.direction = info.unit, info.direction
            result.info.setdefault("extraction", out.extraction)
            results.append(result)
        out.results[spec.name] = results
        out.records[spec.name] = write_run(plan.output / spec.name, results, _provenance(plan, spec, test_feats),
                                           run_name=f"{plan.output.name}-{spec.name}")
    atomic_write_text(plan.output / "plan.json", json.dumps(_plan_record(plan), indent=2, default=str) + "\n")
    return out


def _dense_only(plan: Plan) -> bool:
    users = plan.uses("test")
    return bool(users) and not plan.taps("test") and all(e.dense for e in users)


def _dense_outputs(plan: Plan) -> dict:
    """The engine's dense forward, once per dense evaluator, over the images that evaluator selected."""
    out = {}
    for ev in plan.evaluators:
        request = ev.dense_request(plan)
        if request is None:
            continue
        from .engine.dense_forward import segment

        samples = [plan.seg.samples[i] for i in plan.selections[ev.name]]
        out[ev.name] = segment(plan.model, samples, plan.seg.decoder, plan.text.weights, request, plan.engine,
                               progress=plan.request.progress)
    return out


def _extraction_info(f: Features) -> dict:
    return {"images": int(len(f.index)), "skipped": [p for p, _ in f.bad], "device": f.device,
            "seconds": round(f.seconds, 3), "forward_seconds": round(f.compute_seconds, 3),
            "images_per_second": round(f.images_per_second, 2) if f.seconds else None, "store": f.store,
            "engine": f.engine_info}


def _provenance(plan: Plan, spec, feats: Features) -> dict:
    req = plan.request
    model = plan.model.provenance() if plan.model is not None else plan.test.features.meta.get("model", {})
    transform = plan.model.transform.to_dict() if plan.model is not None else plan.test.features.meta.get(
        "transform", {})
    return {
        "model": model,
        "pooling": {"name": spec.name, **spec.to_dict(), "default": plan.pooling_default},
        "transform": transform,
        "dataset": {"name": req.dataset_name or Path(req.root or req.test or req.test_features or "dataset").name,
                    "test": plan.test.source, "train": plan.train.source if plan.train is not None else None,
                    "classes": plan.seg.protocol.num_classes if plan.seg is not None else len(plan.classes),
                    "unreadable": [list(u) for u in plan.test.unreadable], **plan.test.meta},
        "engine": req.engine.to_dict(),
        "dtype": req.engine.dtype if plan.model is not None else (plan.test.features.meta.get("engine") or {}).get(
            "dtype"),
        "device": feats.device,
        "evaluators": [e.name for e in plan.evaluators],
    }


def _plan_record(plan: Plan) -> dict:
    d = describe(plan, query_store=False)
    d["options"] = {e.name: _jsonable(e.options) for e in plan.evaluators}
    return d


def _jsonable(options) -> dict:
    from dataclasses import asdict, is_dataclass

    return asdict(options) if is_dataclass(options) else {}


def _build_text(plan: Plan) -> None:
    """The zero-shot text classifier, read from / written to the store's text/ folder."""
    from .engine.device import resolve_device
    from .engine.store import read_text_classifier, text_key, write_text_classifier
    from .models.clip_text import build_classifier

    text, store = plan.text, plan.request.store
    prompts = text.prompts
    key = text_key(plan.model, list(prompts.classnames), list(prompts.templates))
    info = {"prompts": prompts.source, "classes": len(prompts.classnames), "templates": len(prompts.templates),
            "cache": "off", "key": key}
    w = read_text_classifier(store.root, key, len(prompts.classnames)) if store.enabled else None
    if w is not None:
        text.weights, text.info = w, {**info, "cache": "hit"}
        return
    w = build_classifier(plan.model, prompts, resolve_device(plan.engine.device), plan.request.progress)
    if store.enabled:
        write_text_classifier(store.root, key, w)
        info["cache"] = "miss (written)"
    text.weights, text.info = w, info


__all__ = ["RunOutput", "describe", "execute"]
