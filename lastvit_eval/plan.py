"""Plan, validate, then compute: everything a run will do, checked before the first forward pass.

`build_plan(request)` resolves the evaluators (registry), indexes the data (images per split, labels,
feature files), loads the model (reading a checkpoint is seconds; forwarding ImageNet is hours),
resolves poolings, maps classes onto the head, and runs every evaluator's cheap `check`. Every failure
is one line and exit code 2, before any image is forwarded. `describe(plan)` is what `--dry-run`
prints: images per split, how many the feature store already holds, forward passes needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from .classmap import ClassMap, declared_labels, map_classes
from .engine.device import EngineSpec
from .engine.store import StoreSpec
from .errors import InputError
from .evaluators import get as get_evaluator
from .evaluators.base import Evaluator
from .models import LoadedModel, LoadOptions
from .pooling import PoolingSpec

HUB_PREFIXES = ("torchvision:", "timm:", "openclip:")


@dataclass(frozen=True)
class RunRequest:
    """What a command asked for, as typed values (the CLI builds it; tests can too)."""

    evaluators: tuple[str, ...]
    options: dict = field(default_factory=dict)  # evaluator name -> its Options instance
    checkpoint: str | None = None
    load: LoadOptions = field(default_factory=LoadOptions)
    poolings: tuple[PoolingSpec, ...] = ()  # empty: the default for the model
    root: Path | None = None
    split: str = "val"
    voc_root: Path | None = None  # a PASCAL VOC devkit instead of an ImageNet-style root
    year: str = "2012"
    image_set: str | None = None  # default: trainval (Main) for boxes, val (Segmentation) for masks
    coco_root: Path | None = None  # folder holding the COCO images named by the annotations' file_name
    coco_annotations: Path | None = None  # COCO instances json (pycocotools)
    image_list: str | Path | None = None  # COCO subset: a file of names / ids, or `coco20k` (the shipped list)
    seg_dataset: str | None = None  # zero-shot segmentation benchmark (assets/seg_datasets.json)
    seg_root: Path | None = None  # its folder, in mmsegmentation's layout
    train: Path | None = None
    test: Path | None = None
    boxes: Path | None = None
    masks: Path | None = None
    train_per_class: int | None = None
    limit: int | None = None
    seed: int = 0
    train_features: Path | None = None
    test_features: Path | None = None
    class_map: Path | None = None
    classnames: Path | None = None
    templates: Path | None = None
    on_bad_annotation: str = "fail"
    engine: EngineSpec = field(default_factory=EngineSpec)
    store: StoreSpec = field(default_factory=StoreSpec)
    output_dir: Path | None = None
    run_name: str | None = None
    dataset_name: str | None = None  # for tables (default: the data root's folder name)
    overwrite: bool = False
    progress: bool = True


@dataclass
class Split:
    """One split's images (or feature-file rows): ids, class names (None: unlabelled), where from."""

    role: str  # test | train
    ids: list[str]
    names: list[str | None]
    source: str
    paths: list[Path] | None = None  # None: rows come from a feature file
    features: object | None = None  # FeatureSet in feature-file mode
    unreadable: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # recorded under provenance.dataset (e.g. the COCO image list)

    @property
    def size(self) -> int:
        return len(self.ids)


@dataclass
class TextClassifier:
    prompts: object
    class_map: ClassMap
    weights: np.ndarray | None = None
    info: dict = field(default_factory=dict)


@dataclass
class Plan:
    request: RunRequest
    evaluators: list[Evaluator]
    model: LoadedModel | None
    poolings: tuple[PoolingSpec, ...]
    pooling_default: bool
    test: Split
    train: Split | None
    classes: list[str]
    output: Path
    declared: dict[str, int] | None = None
    voc: object | None = None  # data.voc.VOCDataset when the test split is a VOC image set
    coco: dict | None = None  # image id (str) -> data.coco_subset.COCOImage when the test split is COCO
    class_map: ClassMap | None = None
    text: TextClassifier | None = None
    selections: dict[str, np.ndarray] = field(default_factory=dict)  # evaluator -> test positions
    seg: object | None = None  # segmentation.datasets.SegData when the test split is a segmentation benchmark

    @property
    def root(self) -> Path | None:
        return self.request.root

    @property
    def split(self) -> str:
        return self.request.split

    @property
    def engine(self) -> EngineSpec:
        return self.request.engine

    @property
    def seed(self) -> int:
        return self.request.seed

    @property
    def eval_device(self) -> str | None:
        return None if self.engine.device == "auto" else self.engine.device

    @property
    def feature_files(self) -> bool:
        return self.model is None

    def annotation_policy(self) -> dict:
        """Keyword arguments for annotation readers (`--on-bad-annotation`)."""
        return {"on_bad_annotation": self.request.on_bad_annotation}

    def labels(self, split: Split) -> np.ndarray:
        idx = {c: i for i, c in enumerate(self.classes)}
        return np.array([idx.get(n, -1) if n is not None else -1 for n in split.names], dtype=np.int64)

    def uses(self, role: str) -> list[Evaluator]:
        return [e for e in self.evaluators if role in e.splits]

    def taps(self, role: str) -> frozenset[str]:
        return frozenset(t for e in self.uses(role) for t in e.taps)

    def test_positions(self) -> np.ndarray:
        return np.unique(np.concatenate(list(self.selections.values()))) if self.selections else np.zeros(0, int)

    def model_name(self) -> str:
        if self.model is not None:
            return self.model.name
        meta = getattr(self.test.features, "meta", {}) or {}
        return str(meta.get("model", {}).get("name") or Path(self.request.test_features or "features").name)


def _run_dir(req: RunRequest, model_name: str) -> Path:
    if req.output_dir is not None:
        return Path(req.output_dir)
    name = req.run_name
    if name is None:
        stem = re.sub(r"\.(pth|pt|safetensors|bin|npz)$", "", Path(model_name).name)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = "-".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", p) for p in ("-".join(req.evaluators), stem, stamp))
    return Path("results") / name


def _check_output_path(path: Path) -> None:
    """Cheap: the output folder is not a file and does not lie under a file (claimed for real later)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{p}: output folder is a file")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{p}: output folder lies under {parent}, which is a file")
            break


def _images_split(req: RunRequest, role: str, need_labels: bool) -> Split:
    from .data.images import index_images
    from .data.recognition import few_shot, from_imagenet, load_labeled

    given = req.test if role == "test" else req.train
    if given is not None:
        data = load_labeled(given)
    else:
        if req.root is None:
            raise InputError(f"give --imagenet-root or --{role}" + (" (a training set for k-NN / linear probe)"
                                                                   if role == "train" else ""))
        split = req.split if role == "test" else "train"
        if role == "train" and not (Path(req.root) / "train").is_dir():
            raise InputError(f"{req.root}: no train/ folder; k-NN and the linear probe need a training set "
                             "(--train, or train/ under --imagenet-root)")
        try:
            data = from_imagenet(req.root, split)
        except InputError:
            if need_labels or role == "train":
                raise
            unreadable: list = []
            records = index_images(req.root, split, unreadable=unreadable)
            return Split(role, [r.image_id for r in records], [None] * len(records), f"{req.root}/{split}",
                         paths=[r.path for r in records], unreadable=unreadable)
    if data.unreadable and req.engine.on_bad_image == "fail":
        path, reason = data.unreadable[0]
        raise InputError(f"{path}: cannot be read ({reason}); use --on-bad-image skip to list and skip it")
    if role == "train" and req.train_per_class:
        data = few_shot(data, req.train_per_class, req.seed)
    return Split(role, list(data.ids), list(data.names), data.source, paths=list(data.paths),
                 unreadable=list(getattr(data, "unreadable", [])))


def _voc_split(req: RunRequest, needs: set[str]):
    """A VOC image set as the test split (Segmentation sets when an evaluator needs masks, else Main)."""
    from .data.voc import VOCDataset

    voc = VOCDataset(req.voc_root, req.year)
    task = "Segmentation" if "seg_labels" in needs else "Main"
    image_set = req.image_set or ("val" if task == "Segmentation" else "trainval")
    ids = voc.image_ids(image_set, task)
    paths = [voc.image_path(i) for i in ids]
    source = f"{voc.root}/ImageSets/{task}/{image_set}.txt"
    return Split("test", ids, [None] * len(ids), source, paths=paths), voc


def _coco_split(req: RunRequest) -> tuple[Split, dict]:
    """A COCO (sub)set as the test split: the listed ids (all when no --image-list) with LOST's boxes; every
    image file must exist under --coco-root (checked here, before any forward)."""
    from .data.coco_subset import describe_image_list, load_coco_subset, read_image_list

    if req.coco_annotations is None or req.coco_root is None:
        raise InputError("COCO object discovery needs both --coco-root (the image folder) and --coco-annotations")
    root = Path(req.coco_root)
    if not root.is_dir():
        raise InputError(f"{root}: COCO image folder does not exist")
    ids = read_image_list(req.image_list) if req.image_list is not None else None
    images = load_coco_subset(req.coco_annotations, ids)
    split_ids, paths = [], []
    for image_id, img in images.items():
        path = root / img.file_name
        if not img.file_name or not path.is_file():
            raise InputError(f"{path}: image {image_id} of {req.coco_annotations} not found under --coco-root")
        split_ids.append(str(image_id))
        paths.append(path)
    meta = {"image_list": describe_image_list(req.image_list, ids)} if ids is not None else {}
    source = f"{req.coco_annotations}" + (f" ({meta['image_list']['source']})" if ids is not None else "")
    coco = {str(k): v for k, v in images.items()}
    return Split("test", split_ids, [None] * len(split_ids), source, paths=paths, meta=meta), coco


def _resolution(evaluators, model: LoadedModel, engine: EngineSpec) -> LoadedModel:
    """An evaluator asking for full-resolution inputs (`input_resolution = "full"`, LOST's protocol) gets a model
    whose transform is `full-padded`; alone in its run, since every evaluator of a run shares one forward."""
    full = [e.name for e in evaluators if getattr(e, "input_resolution", "model") == "full"]
    if not full:
        return model
    if len(evaluators) > 1:
        raise InputError(f"{full[0]} --resolution full feeds whole images; run it alone, not with "
                         f"{', '.join(e.name for e in evaluators if e.name not in full)}")
    if engine.decode == "gpu":
        raise InputError(f"{full[0]} --resolution full: --decode gpu resizes and crops; use --decode cpu")
    from .engine import distributed

    if distributed.current().world > 1:
        raise InputError(f"{full[0]} --resolution full: ragged per-image taps are not exchanged between "
                         "torch.distributed ranks; run it on one process")
    from .engine.full_res import full_resolution

    return full_resolution(model)


def _seg_split(req: RunRequest, wants_train: bool, needs: set[str]):
    """A zero-shot segmentation benchmark as the test split: images with their label files, headers checked."""
    from .segmentation.datasets import open_dataset

    if req.seg_dataset is None or req.seg_root is None:
        raise InputError("give both --seg-dataset NAME and --seg-root DIR")
    if wants_train or "labels" in needs:
        raise InputError("--seg-root serves the zero-shot segmentation evaluator; the others take "
                         "--imagenet-root / --test / --train / --voc-root")
    seg = open_dataset(req.seg_dataset, req.seg_root, req.classnames, req.limit)
    split = Split("test", [s.id for s in seg.samples], [None] * len(seg.samples), seg.source,
                  paths=[s.image for s in seg.samples])
    return split, seg


def _file_split(path: Path, role: str) -> Split:
    from .features_io import load_features

    fs = load_features(path)
    names = [fs.classes[i] if fs.classes and 0 <= i < len(fs.classes) else (str(i) if i >= 0 else None)
             for i in fs.labels.tolist()]
    return Split(role, list(fs.image_ids), names, str(path), features=fs)


def _class_list(names: list[str | None]) -> list[str]:
    known = {n for n in names if n is not None}
    if known and all(n.lstrip("-").isdigit() for n in known):
        return [str(i) for i in sorted(int(n) for n in known)]
    return sorted(known)


def _default_poolings(req: RunRequest, model: LoadedModel | None, test: Split) -> tuple[tuple[PoolingSpec, ...], bool]:
    if req.poolings:
        return req.poolings, False
    if model is None:
        meta = getattr(test.features, "meta", {}) or {}
        specs = [PoolingSpec(**{k: v for k, v in d.items() if k in ("kind", "topk", "sigma", "formula", "eps")})
                 for d in meta.get("poolings", {}).values()]
        if not specs:
            specs = [pooling_from_name(n, test.source) for n in
                     sorted({k.split("/", 1)[1] for k in getattr(test.features, "arrays", {}) if "/" in k})]
        if not specs:
            raise InputError(f"{test.source}: holds no pooled features; pass -p")
        return tuple(specs), True
    hub = str(req.checkpoint).startswith(HUB_PREFIXES)
    if hub and not model.has_class_token:  # no class token (ResNet, SigLIP): the model's own pool
        return ((PoolingSpec("map"),) if model.has_map_head else (PoolingSpec("gap"),)), True
    return ((PoolingSpec("cls"),) if hub else (PoolingSpec("last", topk=1),)), True


def pooling_from_name(name: str, source: str) -> PoolingSpec:
    """The spec behind a stored pooling name (`cls`, `gap`, `last-k5`, `last-k1-s20-paper`)."""
    if name in ("cls", "gap", "map"):
        return PoolingSpec(name)  # type: ignore[arg-type]
    m = re.fullmatch(r"last-k(\d+)(?:-s([0-9.eE+-]+?))?(?:-(paper))?", name)
    if not m:
        raise InputError(f"{source}: cannot read pooling name {name!r}")
    return PoolingSpec("last", topk=int(m.group(1)), sigma=float(m.group(2)) if m.group(2) else None,
                       formula=m.group(3) or "code")


def _check_poolings(poolings, model: LoadedModel | None, test: Split) -> None:
    if model is not None:
        n_patches = model.arch.grid[0] * model.arch.grid[1]
        for p in poolings:
            if p.kind == "last" and p.topk > n_patches:
                raise InputError(f"pooling {p.name}: k={p.topk} exceeds the {n_patches} patches of {model.name} "
                                 "(LAST would silently become GAP)")
            if p.kind == "cls" and not model.has_class_token:
                raise InputError(f"pooling cls: {model.name} ({model.arch.name}) has no class token; use "
                                 f"{_pooling_choices(model)}")
            if p.kind == "map" and not model.has_map_head:
                raise InputError(f"pooling map: {model.name} ({model.arch.name}) has no attention-pool head; use "
                                 f"{_pooling_choices(model)}")
        return
    arrays = getattr(test.features, "arrays", {})
    have = sorted({k.split("/", 1)[1] for k in arrays if "/" in k})
    missing = [p.name for p in poolings if p.name not in have]
    if missing:
        raise InputError(f"{test.source}: no features for pooling {', '.join(missing)} (has: {', '.join(have)})")


def _pooling_choices(model: LoadedModel) -> str:
    """The poolings `model` has, for an error message."""
    kinds = [k for k, ok in (("cls", model.has_class_token), ("gap", True), ("last", True),
                             ("map", model.has_map_head)) if ok]
    return ", ".join(f"-p {k}" for k in kinds[:-1]) + f" or -p {kinds[-1]}"


def _check_internal_taps(evaluators, model: LoadedModel | None) -> None:
    """Keys, CLS attention and block norms are read off transformer blocks: a CNN has none, and keys / CLS
    attention only from an attention module whose queries and keys are recomputed exactly."""
    from .engine.internals import INTERNAL_TAPS, LAST_BLOCK_TAPS, unreadable_attention

    for e in evaluators:
        wanted = sorted(set(e.taps) & INTERNAL_TAPS)
        if wanted and model is not None and not model.backbone.blocks():
            raise InputError(f"{e.name}: needs {', '.join(wanted)} from transformer blocks, which {model.name} "
                             "does not expose (a CNN, or a trunk that is neither a timm ViT nor Eva)")
        last = sorted(set(wanted) & LAST_BLOCK_TAPS)
        why = unreadable_attention(model.backbone) if last and model is not None else None
        if why:
            raise InputError(f"{e.name}: needs {', '.join(last)} of the last block, and {model.name} "
                             f"({model.arch.name}) has {why}")
        if "cls_attn" in wanted and model is not None and not model.has_class_token:
            raise InputError(f"{e.name}: needs the CLS attention, and {model.name} has no class token")


def build_plan(req: RunRequest) -> Plan:
    """Everything checkable without a forward pass; raises InputError (one line) on the first problem."""
    if not req.evaluators:
        raise InputError("--evaluators: give at least one evaluator")
    evaluators = []
    for name in req.evaluators:
        cls = get_evaluator(name)
        evaluators.append(cls(req.options.get(cls.name)))
    if req.limit is not None and req.limit < 1:
        raise InputError(f"--limit {req.limit}: must be a positive number of images")
    if req.train_per_class is not None and req.train_per_class < 1:
        raise InputError(f"--train-per-class {req.train_per_class}: must be positive")
    needs = {n for e in evaluators for n in e.needs}
    wants_train = any("train" in e.splits for e in evaluators)
    if req.output_dir is not None:
        _check_output_path(req.output_dir)

    features_mode = req.test_features is not None
    if features_mode:
        test = _file_split(req.test_features, "test")
        train = _file_split(req.train_features, "train") if wants_train and req.train_features else None
        if wants_train and train is None:
            raise InputError("k-NN / linear probe on feature files need --train-features as well as --test-features")
        model = None
    else:
        if req.train_features is not None:
            raise InputError("--train-features goes with --test-features (feature files instead of a model)")
        if not req.checkpoint:
            raise InputError("give --checkpoint (with images) or --test-features")
        if req.root is not None and not Path(req.root).is_dir():
            raise InputError(f"{req.root}: dataset root is not a folder" if Path(req.root).exists()
                             else f"{req.root}: dataset root does not exist")
        voc = coco = seg = None
        if req.seg_root is not None or req.seg_dataset is not None or any(e.dense for e in evaluators):
            test, seg = _seg_split(req, wants_train, needs)
            train = None
        elif req.coco_annotations is not None or req.coco_root is not None or req.image_list is not None:
            if req.voc_root is not None or wants_train or "labels" in needs:
                raise InputError("--coco-root / --coco-annotations / --image-list serve object discovery (corloc), "
                                 "without --voc-root")
            test, coco = _coco_split(req)
            train = None
        elif req.voc_root is not None:
            if wants_train or "labels" in needs:
                raise InputError("--voc-root serves object discovery and segmentation evaluators; the others "
                                 "take --imagenet-root / --test / --train")
            test, voc = _voc_split(req, needs)
            train = None
        else:
            test = _images_split(req, "test", "labels" in needs)
            train = _images_split(req, "train", True) if wants_train else None
        from .models import load_model

        model = _resolution(evaluators, load_model(req.checkpoint, req.load,
                                                   store_root=req.store.root if req.store.enabled else None),
                            req.engine)

    classes = _class_list(train.names if train is not None else test.names)
    if train is not None:
        unknown = sorted({n for n in test.names if n is not None and n not in set(classes)})
        if unknown:
            raise InputError(f"{test.source}: classes not present in the training set: {', '.join(unknown[:5])}")
    poolings, default = _default_poolings(req, model, test)
    _check_poolings(poolings, model, test)
    _check_internal_taps(evaluators, model)
    declared = declared_labels(req.root) if req.root is not None else None
    if features_mode:
        declared = (test.features.meta.get("dataset", {}) or {}).get("declared_labels") or None
    plan = Plan(request=req, evaluators=evaluators, model=model, poolings=poolings, pooling_default=default,
                test=test, train=train, classes=classes, output=Path("."), declared=declared,
                voc=None if features_mode else voc, coco=None if features_mode else coco)
    plan.seg = None if features_mode else seg
    plan.output = _run_dir(req, plan.model_name())
    _check_output_path(plan.output)

    if "labels" in needs and not any(n is not None for n in test.names):
        raise InputError(f"{test.source}: no class labels (class folders, meta/{req.split}.txt or a labelled CSV)")
    if "head" in needs:
        plan.class_map = _head_map(plan)
    if "text" in needs:
        plan.text = _text_plan(plan)
    for e in evaluators:
        e.check(plan)
    _select(plan)
    return plan


def _head_map(plan: Plan) -> ClassMap:
    req = plan.request
    if plan.model is not None:
        outputs = plan.model.arch.num_classes
        if outputs is None:
            raise InputError(f"{plan.model.source}: classify needs a classification head and this checkpoint has "
                             "none")
        what = plan.model.source
    else:
        fs = plan.test.features
        logits = [k for k in fs.arrays if k.startswith("logits/")]
        if not logits:
            raise InputError(f"{plan.test.source}: holds no logits (extract it from a checkpoint with a head)")
        outputs = int(fs.arrays[logits[0]].shape[1])
        what = plan.test.source
    return map_classes(plan.classes, outputs, what, req.class_map, plan.declared)


def _text_plan(plan: Plan) -> TextClassifier:
    from .models.clip_text import load_prompts

    req = plan.request
    if plan.model is None or getattr(plan.model.backbone, "clip", None) is None:
        kind = "feature files" if plan.model is None else f"a {plan.model.arch.family} model"
        raise InputError(f"{req.checkpoint or req.test_features}: zero-shot needs a CLIP checkpoint with a text "
                         f"tower (family openclip); this is {kind}")
    tokenizer = (getattr(plan.model.backbone, "details", None) or {}).get("tokenizer")
    if tokenizer:  # e.g. SigLIP: open_clip's SimpleTokenizer would give other token ids, hence wrong class vectors
        raise InputError(f"{req.checkpoint}: zero-shot with this text tower needs the {tokenizer!r} tokenizer; only "
                         "open_clip's SimpleTokenizer (OpenAI BPE) is supported")
    if plan.seg is not None:
        return _seg_text(plan)
    prompts = load_prompts(req.classnames, req.templates)
    if req.classnames is None:
        cmap = map_classes(plan.classes, len(prompts.classnames), f"{plan.test.source} (ImageNet-1k prompts)",
                           req.class_map, plan.declared)
    else:
        if len(plan.classes) != len(prompts.classnames):
            raise InputError(f"{req.classnames}: lists {len(prompts.classnames)} class names but the dataset has "
                             f"{len(plan.classes)} classes ({plan.test.source})")
        cmap = ClassMap(np.arange(len(plan.classes)), f"--classnames {req.classnames} in label order",
                        len(plan.classes))
    return TextClassifier(prompts=prompts, class_map=cmap)


def _seg_text(plan: Plan) -> TextClassifier:
    """Queries (class names with synonyms, the protocol's or --classnames) x templates (OpenAI's 80 or
    --templates); one classifier column per query, the class map says which class each belongs to."""
    from .models.clip_text import Prompts, read_templates

    proto, req = plan.seg.protocol, plan.request
    prompts = proto.prompts()
    if req.templates is not None:
        prompts = Prompts(prompts.classnames, tuple(read_templates(req.templates)),
                          f"{proto.name} class names x --templates {req.templates}")
    if req.classnames is not None:
        prompts = Prompts(prompts.classnames, prompts.templates, f"--classnames {req.classnames}; " + prompts.source)
    cmap = ClassMap(np.asarray(proto.query_class, dtype=np.int64), f"{proto.name} queries -> classes",
                    proto.num_classes)
    return TextClassifier(prompts=prompts, class_map=cmap)


def _select(plan: Plan) -> None:
    pos = {i: n for n, i in enumerate(plan.test.ids)}
    labelled = np.array([n for n, name in enumerate(plan.test.names) if name is not None], dtype=np.int64)
    everything = np.arange(plan.test.size)
    for e in plan.evaluators:
        ids = e.select(plan)
        if ids is None:
            chosen = labelled if "labels" in e.needs else everything
        else:
            missing = [i for i in ids if i not in pos]
            if missing:
                raise InputError(f"{e.name}: selects images that are not in {plan.test.source} (e.g. {missing[0]})")
            chosen = np.array([pos[i] for i in ids], dtype=np.int64)
        if plan.request.limit is not None:
            chosen = chosen[: plan.request.limit]
        if chosen.size == 0:
            raise InputError(f"{e.name}: no image of {plan.test.source} to evaluate")
        plan.selections[e.name] = chosen


def _stored(plan: Plan, role: str, split: Split, positions: np.ndarray) -> dict:
    """How many of the split's images the feature store holds every requested tap for."""
    from .engine.extract import stored_counts
    from .engine.taps import TapRequest

    if plan.model is None:
        return {"stored": int(len(positions)), "to_forward": 0, "features_file": split.source}
    if not plan.taps(role) and all(e.dense for e in plan.uses(role)):
        return {"stored": 0, "to_forward": int(len(positions)),
                "note": "dense forward (zero-shot segmentation): not cached, every image is forwarded"}
    if not plan.request.store.enabled:
        return {"stored": 0, "to_forward": int(len(positions))}
    from .engine.full_res import uses_store

    if not uses_store(plan.model):
        return {"stored": 0, "to_forward": int(len(positions)), "store": "not used at --resolution full (ragged taps)"}
    counts = stored_counts(plan.model, [split.paths[i] for i in positions], TapRequest(plan.poolings, plan.taps(role)),
                           plan.engine, plan.request.store)
    return {"stored": counts["stored"], "to_forward": counts["to_forward"], "space": counts["space"]}


def describe(plan: Plan, query_store: bool = True) -> dict:
    """The plan as data: for --dry-run with what the feature store already holds (`query_store`), for
    plan.json after a run without asking the store again."""
    splits = {}
    for role, split, positions in (("test", plan.test, plan.test_positions()),
                                   ("train", plan.train, None if plan.train is None else np.arange(plan.train.size))):
        if split is None or not plan.uses(role) and role == "train":
            continue
        entry = {"source": split.source, "images": int(len(positions)), "taps": sorted(plan.taps(role))}
        if query_store:
            entry.update(_stored(plan, role, split, positions))
        splits[role] = entry
    return {
        "evaluators": [e.name for e in plan.evaluators],
        "model": plan.model_name(),
        "poolings": [p.name for p in plan.poolings],
        "pooling_default": plan.pooling_default,
        "images_per_evaluator": {name: int(len(v)) for name, v in plan.selections.items()},
        "splits": splits,
        "forward_passes": int(sum(s.get("to_forward", 0) for s in splits.values())),
        "output": str(plan.output),
        "store": str(plan.request.store.root) if plan.request.store.enabled else None,
        "class_map": plan.class_map.source if plan.class_map is not None else None,
    }
