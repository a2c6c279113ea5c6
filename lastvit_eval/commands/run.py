"""`lastvit-eval run -e a,b` and its thin aliases: `patch-hit`, `knn`, `linear-probe`, `classify`, `zero-shot`,
`artifacts`, `zero-shot-seg`, ...

Every alias is `run -e NAME` with the options that evaluator uses; all go through `run_command`:
parse -> RunRequest -> build_plan (every check, no forward) -> --dry-run or execute -> console summary.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from ..app import app
from ..errors import InputError
from . import options as o

CLI_NAMES = {"precision": "probe_precision", "thresholds": "threshold"}  # an Options field -> the command-line parameter carrying it


def _numbers(option: str, text: str, kind: type) -> tuple:
    try:
        values = tuple(kind(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise InputError(f"--{option.replace('_', '-')} {text!r}: expected comma-separated {kind.__name__}s") from None
    if not values:
        raise InputError(f"--{option.replace('_', '-')}: give at least one value")
    return values


def evaluator_options(cls, kw: dict):
    """An evaluator's Options from the command's values: a field is set when the command has a parameter
    of that name (comma-separated text for tuple fields); fields the command lacks keep their default."""
    if not dataclasses.is_dataclass(cls.Options):
        return cls.Options()
    values = {}
    for f in dataclasses.fields(cls.Options):
        cli = CLI_NAMES.get(f.name, f.name)
        if cli not in kw or kw[cli] is None:
            continue
        v = kw[cli]
        if isinstance(v, list):
            v = tuple(v)
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(v, str) and (isinstance(default, tuple) or "tuple" in str(f.type)):
            kind = type(default[0]) if isinstance(default, tuple) and default else float
            v = _numbers(cli, v, kind)
        values[f.name] = v
    return cls.Options(**values)


def poolings_from(texts: list[str] | None, topk: int | None, sigma: float | None, formula: str | None) -> tuple:
    """Repeatable -p values; --topk/--sigma/--score-formula fill what a `last` pooling does not set itself."""
    from ..pooling import PoolingSpec

    shorthand = {"k": topk, "sigma": sigma, "formula": formula}
    if not texts:
        if any(v is not None for v in shorthand.values()):
            texts = ["last"]
        else:
            return ()
    specs: dict[str, PoolingSpec] = {}
    for text in texts:
        kind, _, rest = text.strip().partition(":")
        if kind == "last":
            given = {part.partition("=")[0].strip() for part in rest.split(",") if part.strip()}
            given = {"k" if g == "topk" else g for g in given}
            extra = [f"{k}={v}" for k, v in shorthand.items() if v is not None and k not in given]
            text = "last:" + ",".join(p for p in [rest, *extra] if p)
        spec = PoolingSpec.parse(text)
        specs.setdefault(spec.name, spec)
    return tuple(specs.values())


def evaluator_names() -> set[str] | None:
    """Names of the evaluators, without importing them (they import torch): `@register` classes found by
    reading the sources of `lastvit_eval/evaluators/`, plus any evaluator already registered in this process.
    None when a registered class does not spell its name as a literal (then only the registry can tell).
    Checked against the real registry by tests/test_startup.py."""
    import ast
    import importlib.util

    names: set[str] = set()
    if "lastvit_eval.evaluators.base" in sys.modules:
        names.update(sys.modules["lastvit_eval.evaluators.base"].EVALUATORS)
    spec = importlib.util.find_spec("lastvit_eval.evaluators")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for path in sorted(Path(folder).glob("*.py")):
            text = path.read_text(encoding="utf-8")
            if "@register" not in text:
                continue
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ClassDef) and any(
                        (d.id if isinstance(d, ast.Name) else getattr(d, "attr", None)) == "register"
                        for d in node.decorator_list):
                    name = _literal_name(node)
                    if name is None:
                        return None
                    names.add(name)
    return names


def _literal_name(node) -> str | None:
    """`name = "..."` in a class body (plain or annotated assignment), else None."""
    import ast

    found = None
    for stmt in node.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) \
            else []
        value = getattr(stmt, "value", None)
        if [getattr(t, "id", None) for t in targets] == ["name"] and isinstance(value, ast.Constant) \
                and isinstance(value.value, str):
            found = value.value
    return found


CHOICES = (("on_bad_image", ("skip", "fail")), ("on_bad_annotation", ("skip", "fail")),
           ("dtype", ("fp32", "bf16", "fp16")), ("decode", ("cpu", "gpu")))


def check_choices(kw: dict) -> None:
    """Options with a fixed set of values, checked before anything heavy is imported."""
    for name, allowed in CHOICES:
        if kw.get(name) is not None and kw[name] not in allowed:
            raise InputError(f"--{name.replace('_', '-')} {kw[name]!r}: use {' or '.join(allowed)}")


def precheck(evaluators: list[str], kw: dict) -> None:
    """The errors that need no model, before torch is imported (so they answer at once): option values,
    evaluator names, a missing checkpoint file or dataset root. The plan checks all of them again."""
    get_ = kw.get
    check_choices(kw)
    if not evaluators:
        raise InputError("--evaluators: give at least one evaluator")
    known = evaluator_names()
    for name in evaluators if known is not None else ():
        if name.strip().replace("_", "-") not in known and name not in known:
            raise InputError(f"unknown evaluator {name!r}; available: {', '.join(sorted(known))}")
    if get_("limit") is not None and get_("limit") < 1:
        raise InputError(f"--limit {get_('limit')}: must be a positive number of images")
    if get_("test_features") is not None or get_("train_features") is not None:
        return
    ckpt = get_("checkpoint")
    if ckpt and not str(ckpt).startswith(("torchvision:", "timm:", "openclip:")) and not Path(ckpt).exists():
        raise InputError(f"{ckpt}: checkpoint file not found")
    seg_root = get_("seg_root")
    if seg_root is not None and not Path(seg_root).is_dir():
        raise InputError(f"{seg_root}: --seg-root is not a folder" if Path(seg_root).exists()
                         else f"{seg_root}: --seg-root does not exist")
    root = get_("imagenet_root")
    if ckpt and root is not None and not Path(root).is_dir():
        raise InputError(f"{root}: dataset root is not a folder" if Path(root).exists()
                         else f"{root}: dataset root does not exist")


def run_command(evaluators: list[str], kw: dict) -> None:
    """Build the request from a command's parameters, plan, check, then run or print the plan."""
    precheck(evaluators, kw)
    from ..engine.device import EngineSpec
    from ..engine.distributed import session
    from ..engine.store import StoreSpec
    from ..evaluators import get
    from ..models import LoadOptions
    from ..plan import RunRequest, build_plan, describe

    get_ = kw.get
    classes = [get(e) for e in evaluators]
    options = {c.name: evaluator_options(c, kw) for c in classes}
    engine = EngineSpec(device=get_("device") or "auto", dtype=get_("dtype") or "fp32",
                        batch_size=get_("batch_size") or 64, workers=get_("workers"),
                        on_bad_image=get_("on_bad_image") or "skip", channels_last=bool(get_("channels_last")),
                        compile=bool(get_("compile")), decode=get_("decode") or "cpu")
    store = StoreSpec(dir=get_("cache_dir"), enabled=not get_("no_cache"), shard_size=get_("shard_size") or 1024)
    load = LoadOptions(trust=bool(get_("trust_checkpoint")), ignore_keys=tuple(get_("ignore_keys") or ()),
                       num_heads=get_("num_heads"), checkpoint_key=get_("checkpoint_key"), family=get_("family"),
                       quick_gelu=get_("quick_gelu"), arch=get_("arch"),
                       image_size=get_("image_size"))
    req = RunRequest(
        evaluators=tuple(c.name for c in classes), options=options, checkpoint=get_("checkpoint"), load=load,
        poolings=poolings_from(get_("pooling"), get_("topk"), get_("sigma"), get_("score_formula")),
        root=get_("imagenet_root"), split=get_("split") or "val", train=get_("train"), test=get_("test"),
        voc_root=get_("voc_root"), year=str(get_("year") or "2012"), image_set=get_("image_set"),
        coco_root=get_("coco_root"), coco_annotations=get_("coco_annotations"), image_list=get_("image_list"),
        seg_dataset=get_("seg_dataset"), seg_root=get_("seg_root"),
        dataset_name=_seg_dataset_name(get_("seg_dataset")),
        boxes=get_("boxes"), masks=get_("masks"), train_per_class=get_("train_per_class"), limit=get_("limit"),
        seed=get_("seed") or 0, train_features=get_("train_features"), test_features=get_("test_features"),
        class_map=get_("class_map"), classnames=get_("classnames"), templates=get_("templates"),
        on_bad_annotation=get_("on_bad_annotation") or "fail", engine=engine, store=store,
        output_dir=get_("output_dir"), run_name=get_("run_name"), overwrite=bool(get_("overwrite")),
        progress=not get_("no_progress"))
    with session(engine.device, get_("barrier_timeout") or 1800.0):
        plan = build_plan(req)
        if get_("dry_run"):
            _print_plan(describe(plan), bool(get_("json")))
            return
        from ..pipeline import execute

        out = execute(plan)
    if out is not None:
        _summarize(out, bool(get_("json")))


def _seg_dataset_name(name: str | None) -> str | None:
    if name is None:
        return None
    from ..segmentation.protocol import canonical_name

    return canonical_name(name)


def _print_plan(d: dict, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(d, indent=2) + "\n")
        return
    from ..report.console import console

    console.print(f"[bold]plan[/]: {', '.join(d['evaluators'])} on {d['model']}, poolings "
                  f"{', '.join(d['poolings'])}{' (default)' if d['pooling_default'] else ''}")
    for role, s in d["splits"].items():
        console.print(f"  {role}: {s['images']} images from {s['source']}; {s.get('stored', 0)} already in the "
                      f"feature store, {s.get('to_forward', 0)} to forward (taps: {', '.join(s['taps'])})")
    console.print(f"  forward passes needed: {d['forward_passes']}; output: {d['output']}")


def _summarize(out, as_json: bool) -> None:
    from ..report.console import console, pooling_caption, print_result

    plan = out.plan
    if plan.pooling_default and plan.model is not None:
        console.print(f"[yellow]pooling {plan.poolings[0].name} is a default[/]: the checkpoint does not say how it "
                      "was trained (-p cls for a CLS-trained baseline, -p last for LAST)")
    for pooling, results in out.results.items():
        for r in results:
            print_result(r, f"{r.evaluator}  {plan.model_name()}  pooling={pooling}")
    console.print(f"[dim]poolings: {pooling_caption(plan.poolings)}[/]")
    for role, e in out.extraction.items():
        s = e.get("store") or {}
        if s.get("space"):
            console.print(f"{role}: {s['images_reused']} images read from the feature store, {s['images_computed']} "
                          f"forwarded" + (f", {len(s['corrupt'])} damaged shard(s) recomputed" if s["corrupt"] else ""))
    console.print(f"results written to [bold]{out.out_dir}[/]")
    if as_json:
        summary = {"output": str(out.out_dir), "runs": {p: {"dir": str(out.out_dir / p), "metrics": rec["metrics"]}
                                                        for p, rec in out.records.items()}}
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")


@app.command("run")
def run(
    evaluators: o.Evaluators = "patch-hit,knn",
    checkpoint: o.Checkpoint = None, trust_checkpoint: o.TrustCheckpoint = False, ignore_keys: o.IgnoreKeys = None,
    num_heads: o.NumHeads = None, checkpoint_key: o.CheckpointKey = None, family: o.Family = None,
    quick_gelu: o.QuickGelu = None, arch: o.Arch = None, image_size: o.ImageSize = None,
    pooling: o.Pooling = None, topk: o.TopK = None, sigma: o.Sigma = None, score_formula: o.ScoreFormula = None,
    imagenet_root: o.Root = None, split: o.Split = "val", train: o.Train = None, test: o.Test = None,
    train_features: o.TrainFeatures = None, test_features: o.TestFeatures = None,
    train_per_class: o.TrainPerClass = None, limit: o.Limit = None, seed: o.Seed = 0, class_map: o.ClassMap = None,
    boxes: o.Boxes = None, masks: o.Masks = None, on_bad_annotation: o.OnBadAnnotation = "fail",
    classnames: o.Classnames = None, templates: o.Templates = None,
    voc_root: o.VocRoot = None, year: o.Year = "2012", image_set: o.ImageSet = None,
    coco_root: o.CocoRoot = None, coco_annotations: o.CocoAnnotations = None, image_list: o.ImageList = None,
    hit_rule: o.HitRule = None, fg_fraction: o.FgFraction = 0.5, single_object: o.SingleObject = True,
    max_box_area: o.MaxBoxArea = 0.25,
    method: o.Method = "last-votes", vote_std: o.VoteStd = 1.0, vote_threshold: o.VoteThreshold = None,
    resolution: o.Resolution = None, k_patches: o.KPatches = 100, dinoseg_head: o.DinosegHead = 4,
    threshold: o.Threshold = None,
    seg_dataset: o.SegDataset = None, seg_root: o.SegRoot = None, dense: o.Dense = "plain",
    bg_threshold: o.BgThreshold = None, save_predictions: o.SavePredictions = None,
    ks: o.Ks = "10,20,100,200", temperature: o.Temperature = 0.07,
    weight_decays: o.WeightDecays = None, solver: o.Solver = "lbfgs", holdout_fraction: o.HoldoutFraction = 0.1,
    probe_precision: o.ProbePrecision = "bf16", lrs: o.Lrs = None,
    norm_threshold: o.NormThreshold = None, norm_ratio: o.NormRatio = None, blocks: o.Blocks = False,
    mask_top: o.MaskTop = None, mask_bottom: o.MaskBottom = None,
    device: o.Device = "auto", dtype: o.Dtype = "fp32", batch_size: o.BatchSize = 64, workers: o.Workers = None,
    on_bad_image: o.OnBadImage = "skip", channels_last: o.ChannelsLast = False, compile: o.Compile = False,
    decode: o.Decode = "cpu", barrier_timeout: o.BarrierTimeout = 1800.0,
    cache_dir: o.CacheDir = None, no_cache: o.NoCache = False, shard_size: o.ShardSize = 1024,
    output_dir: o.OutputDir = None, run_name: o.RunName = None, overwrite: o.Overwrite = False,
    dry_run: o.DryRun = False, json: o.Json = False, no_progress: o.NoProgress = False,
) -> None:
    """Several evaluators over one forward pass per split (results/<run>/<pooling>/)."""
    names = [e.strip() for e in evaluators.split(",") if e.strip()]
    run_command(names, locals())


@app.command("patch-hit")
def patch_hit(
    checkpoint: o.Checkpoint = None, trust_checkpoint: o.TrustCheckpoint = False, ignore_keys: o.IgnoreKeys = None,
    num_heads: o.NumHeads = None, checkpoint_key: o.CheckpointKey = None, family: o.Family = None,
    quick_gelu: o.QuickGelu = None, arch: o.Arch = None, image_size: o.ImageSize = None,
    pooling: o.Pooling = None, topk: o.TopK = None, sigma: o.Sigma = None, score_formula: o.ScoreFormula = None,
    imagenet_root: o.Root = None, split: o.Split = "val", limit: o.Limit = None, seed: o.Seed = 0,
    boxes: o.Boxes = None, masks: o.Masks = None, on_bad_annotation: o.OnBadAnnotation = "fail",
    hit_rule: o.HitRule = None, fg_fraction: o.FgFraction = 0.5, single_object: o.SingleObject = True,
    max_box_area: o.MaxBoxArea = 0.25,
    device: o.Device = "auto", dtype: o.Dtype = "fp32", batch_size: o.BatchSize = 64, workers: o.Workers = None,
    on_bad_image: o.OnBadImage = "skip", channels_last: o.ChannelsLast = False, compile: o.Compile = False,
    decode: o.Decode = "cpu", barrier_timeout: o.BarrierTimeout = 1800.0,
    cache_dir: o.CacheDir = None, no_cache: o.NoCache = False, shard_size: o.ShardSize = 1024,
    output_dir: o.OutputDir = None, run_name: o.RunName = None, overwrite: o.Overwrite = False,
    dry_run: o.DryRun = False, json: o.Json = False, no_progress: o.NoProgress = False,
) -> None:
    """Point-in-box: how often the patch most similar to the pooled token lies inside the object's box."""
    run_command(["patch-hit"], locals())


@app.command("knn")
def knn(
    checkpoint: o.Checkpoint = None, trust_checkpoint: o.TrustCheckpoint = False, ignore_keys: o.IgnoreKeys = None,
    num_heads: o.NumHeads = None, checkpoint_key: o.CheckpointKey = None, family: o.Family = None,
    quick_gelu: o.QuickGelu = None, arch: o.Arch = None, image_size: o.ImageSize = None,
    pooling: o.Pooling = None, topk: o.TopK = None, sigma: o.Sigma = None, score_formula: o.ScoreFormula = None,
    imagenet_root: o.Root = None, split: o.Split = "val", train: o.Train = None, test: o.Test = None,
    train_features: o.TrainFeatures = None, test_features: o.TestFeatures = None,
    train_per_class: o.TrainPerClass = None, limit: o.Limit = None, seed: o.Seed = 0,
    ks: o.Ks = "10,20,100,200", temperature: o.Temperature = 0.07,
    device: o.Device = "auto", dtype: o.Dtype = "fp32", batch_size: o.BatchSize = 64, workers: o.Workers = None,
    on_bad_image: o.OnBadImage = "skip", channels_last: o.ChannelsLast = False, compile: o.Compile = False,
    decode: o.Decode = "cpu", barrier_timeout: o.BarrierTimeout = 1800.0,
    cache_dir: o.CacheDir = None, no_cache: o.NoCache = False, shard_size: o.ShardSize = 1024,
    output_dir: o.OutputDir = None, run_name: o.RunName = None, overwrite: o.Overwrite = False,
    dry_run: o.DryRun = False, json: o.Json = False, no_progress: o.NoProgress = False,
) -> None:
    """k-NN classification (DINO protocol: cosine, exp(sim/T) votes) of pooled features."""
    run_command(["knn"], locals())


@app.command("linear-probe")
def linear_probe(
    checkpoint: o.Checkpoint = None, trust_checkpoint: o.TrustCheckpoint = False, ignore_keys: o.IgnoreKeys = None,
    num_heads: o.NumHeads = None, checkpoint_key: o.CheckpointKey = None, family: o.Family = None,
    quick_gelu: o.QuickGelu = None, arch: o.Arch = None, image_size: o.ImageSize = None,
    pooling: o.Pooling = None, topk: o.TopK = None, sigma: o.Sigma = None, score_formula: o.ScoreFormula = None,
    imagenet_root: o.Root = None, split: o.Split = "val", train: o.Train = None, test: o.Test = None,
    train_features: o.TrainFeatures = None, test_features: o.TestFeatures = None,
    train_per_class: o.TrainPerClass = None, limit: o.Limit = None, seed: o.Seed = 0,
    weight_decays: o.WeightDecays = None, solver: o.Solver = "lbfgs", holdout_fraction: o.HoldoutFraction = 0.1,
    probe_precision: o.ProbePrecision = "bf16", lrs: o.Lrs = None,
    device: o.Device = "auto", dtype: o.Dtype = "fp32", batch_size: o.BatchSize = 64, workers: o.Workers = None,
    on_bad_image: o.OnBadImage = "skip", channels_last: o.ChannelsLast = False, compile: o.Compile = False,
    decode: o.Decode = "cpu", barrier_timeout: o.BarrierTimeout = 1800.0,
    cache_dir: o.CacheDir = None, no_cache: o.NoCache = False, shard_size: o.ShardSize = 1024,
    output_dir: o.OutputDir = None, run_name: o.RunName = None, overwrite: o.Overwrite = False,
    dry_run: o.DryRun = False, json: o.Json = False, no_progress: o.NoProgress = False,
) -> None:
    """Multinomial logistic regression on frozen pooled features (weight decay chosen on a hold-out of train)."""
    run_command(["linear-probe"], locals())


@app.command("classify")
def classify(
    checkpoint: o.Checkpoint = None, trust_checkpoint: o.TrustCheckpoint = False, ignore_keys: o.IgnoreKeys = None,
    num_heads: o.NumHeads = None, checkpoint_key: o.CheckpointKey = None, family: o.Family = None,
    quick_gelu: o.QuickGelu = None, arch: o.Arch = None, image_size: o.ImageSize = None,
    pooling: o.Pooling = None, topk: o.TopK = None, sigma: o.Sigma = None, score_formula: o.ScoreFormula = None,
    imagenet_root: o.Root = None, split: o.Split = "val", test: o.Test = None, test_features: o.TestFeatures = None,
    limit: o.Limit = None, seed: o.Seed = 0, class_map: o.ClassMap = None,
    device: o.Device = "auto", dtype: o.Dtype = "fp32", batch_size: o.BatchSize = 64, workers: o.Workers = None,
    on_bad_image: o.OnBadImage = "skip", channels_last: o.ChannelsLast = False, compile: o.Compile = False,
    decode: o.Decode = "cpu", barrier_timeout: o.BarrierTimeout = 1800.0,
    cache_dir: o.CacheDir = None, no_cache: o.NoCache = False, shard_size: o.ShardSize = 1024,
    output_dir: o.OutputDir = None, run_name: o.RunName = None, overwrite: o.Overwrite = False,
    dry_run: o.DryRun = False, json: o.Json = False, no_progress: o.NoProgress = False,
) -> None:
    """Accuracy of the checkpoint's own head on the pooled token (classes mapped to head outputs explicitly)."""
    run_command(["classify"], locals())


@app.command("zero-shot")
def zero_shot(
    checkpoint: o.Checkpoint = None, trust_checkpoint: o.TrustCheckpoint = False, ignore_keys: o.IgnoreKeys = None,
    num_heads: o.NumHeads = None, checkpoint_key: o.CheckpointKey = None, family: o.Family = None,
    quick_gelu: o.QuickGelu = None, arch: o.Arch = None, image_size: o.ImageSize = None,
    pooling: o.Pooling = None, topk: o.TopK = None, sigma: o.Sigma = None, score_formula: o.ScoreFormula = None,
    imagenet_root: o.Root = None, split: o.Split = "val", test: o.Test = None, limit: o.Limit = None,
    seed: o.Seed = 0, class_map: o.ClassMap = None, classnames: o.Classnames = None, templates: o.Templates = None,
    device: o.Device = "auto", dtype: o.Dtype = "fp32", batch_size: o.BatchSize = 64, workers: o.Workers = None,
    on_bad_image: o.OnBadImage = "skip", channels_last: o.ChannelsLast = False, compile: o.Compile = False,
    decode: o.Decode = "cpu", barrier_timeout: o.BarrierTimeout = 1800.0,
    cache_dir: o.CacheDir = None, no_cache: o.NoCache = False, shard_size: o.ShardSize = 1024,
    output_dir: o.OutputDir = None, run_name: o.RunName = None, overwrite: o.Overwrite = False,
    dry_run: o.DryRun = False, json: o.Json = False, no_progress: o.NoProgress = False,
) -> None:
    """Zero-shot top-1/top-5 of a CLIP checkpoint: pooled token -> visual.proj -> text classifier."""
    run_command(["zero-shot"], locals())


@app.command("corloc")
def corloc(
    checkpoint: o.Checkpoint = None, trust_checkpoint: o.TrustCheckpoint = False, ignore_keys: o.IgnoreKeys = None,
    num_heads: o.NumHeads = None, checkpoint_key: o.CheckpointKey = None, family: o.Family = None,
    quick_gelu: o.QuickGelu = None, arch: o.Arch = None, image_size: o.ImageSize = None,
    pooling: o.Pooling = None, topk: o.TopK = None, sigma: o.Sigma = None, score_formula: o.ScoreFormula = None,
    voc_root: o.VocRoot = None, year: o.Year = "2012", image_set: o.ImageSet = None, limit: o.Limit = None,
    seed: o.Seed = 0,
    coco_root: o.CocoRoot = None, coco_annotations: o.CocoAnnotations = None, image_list: o.ImageList = None,
    method: o.Method = "last-votes", vote_std: o.VoteStd = 1.0, vote_threshold: o.VoteThreshold = None,
    resolution: o.Resolution = None, k_patches: o.KPatches = 100, dinoseg_head: o.DinosegHead = 4,
    device: o.Device = "auto", dtype: o.Dtype = "fp32", batch_size: o.BatchSize = 64, workers: o.Workers = None,
    on_bad_image: o.OnBadImage = "skip", channels_last: o.ChannelsLast = False, compile: o.Compile = False,
    decode: o.Decode = "cpu", barrier_timeout: o.BarrierTimeout = 1800.0,
    cache_dir: o.CacheDir = None, no_cache: o.NoCache = False, shard_size: o.ShardSize = 1024,
    output_dir: o.OutputDir = None, run_name: o.RunName = None, overwrite: o.Overwrite = False,
    dry_run: o.DryRun = False, json: o.Json = False, no_progress: o.NoProgress = False,
) -> None:
    """Object discovery on VOC or COCO: CorLoc of one box per image (LAST votes, LOST or DINO-seg; IoU >= 0.5)."""
    run_command(["corloc"], locals())


@app.command("coarse-seg")
def coarse_seg(
    checkpoint: o.Checkpoint = None, trust_checkpoint: o.TrustCheckpoint = False, ignore_keys: o.IgnoreKeys = None,
    num_heads: o.NumHeads = None, checkpoint_key: o.CheckpointKey = None, family: o.Family = None,
    quick_gelu: o.QuickGelu = None, arch: o.Arch = None, image_size: o.ImageSize = None,
    pooling: o.Pooling = None, topk: o.TopK = None, sigma: o.Sigma = None, score_formula: o.ScoreFormula = None,
    voc_root: o.VocRoot = None, year: o.Year = "2012", image_set: o.ImageSet = None, limit: o.Limit = None,
    seed: o.Seed = 0, threshold: o.Threshold = None,
    device: o.Device = "auto", dtype: o.Dtype = "fp32", batch_size: o.BatchSize = 64, workers: o.Workers = None,
    on_bad_image: o.OnBadImage = "skip", channels_last: o.ChannelsLast = False, compile: o.Compile = False,
    decode: o.Decode = "cpu", barrier_timeout: o.BarrierTimeout = 1800.0,
    cache_dir: o.CacheDir = None, no_cache: o.NoCache = False, shard_size: o.ShardSize = 1024,
    output_dir: o.OutputDir = None, run_name: o.RunName = None, overwrite: o.Overwrite = False,
    dry_run: o.DryRun = False, json: o.Json = False, no_progress: o.NoProgress = False,
) -> None:
    """Coarse segmentation on VOC masks: fg/bg IoU of thresholded patch scores (cosine to the pooled token)."""
    run_command(["coarse-seg"], locals())


@app.command("artifacts")
def artifacts(
    checkpoint: o.Checkpoint = None, trust_checkpoint: o.TrustCheckpoint = False, ignore_keys: o.IgnoreKeys = None,
    num_heads: o.NumHeads = None, checkpoint_key: o.CheckpointKey = None, family: o.Family = None,
    quick_gelu: o.QuickGelu = None, arch: o.Arch = None, image_size: o.ImageSize = None,
    pooling: o.Pooling = None, topk: o.TopK = None, sigma: o.Sigma = None, score_formula: o.ScoreFormula = None,
    imagenet_root: o.Root = None, split: o.Split = "val", test: o.Test = None, limit: o.Limit = None,
    seed: o.Seed = 0, class_map: o.ClassMap = None, boxes: o.Boxes = None, masks: o.Masks = None,
    on_bad_annotation: o.OnBadAnnotation = "fail",
    voc_root: o.VocRoot = None, year: o.Year = "2012", image_set: o.ImageSet = None,
    norm_threshold: o.NormThreshold = None, norm_ratio: o.NormRatio = None, blocks: o.Blocks = False,
    mask_top: o.MaskTop = None, mask_bottom: o.MaskBottom = None,
    device: o.Device = "auto", dtype: o.Dtype = "fp32", batch_size: o.BatchSize = 64, workers: o.Workers = None,
    on_bad_image: o.OnBadImage = "skip", channels_last: o.ChannelsLast = False, compile: o.Compile = False,
    decode: o.Decode = "cpu", barrier_timeout: o.BarrierTimeout = 1800.0,
    cache_dir: o.CacheDir = None, no_cache: o.NoCache = False, shard_size: o.ShardSize = 1024,
    output_dir: o.OutputDir = None, run_name: o.RunName = None, overwrite: o.Overwrite = False,
    dry_run: o.DryRun = False, json: o.Json = False, no_progress: o.NoProgress = False,
) -> None:
    """High-norm artifact tokens per image (norms, outliers, where they sit) and the patch-masking probe."""
    run_command(["artifacts"], locals())


@app.command("zero-shot-seg")
def zero_shot_seg(
    checkpoint: o.Checkpoint = None, trust_checkpoint: o.TrustCheckpoint = False, ignore_keys: o.IgnoreKeys = None,
    num_heads: o.NumHeads = None, checkpoint_key: o.CheckpointKey = None, family: o.Family = None,
    quick_gelu: o.QuickGelu = None, arch: o.Arch = None, image_size: o.ImageSize = None,
    seg_dataset: o.SegDataset = None, seg_root: o.SegRoot = None, dense: o.Dense = "plain",
    bg_threshold: o.BgThreshold = None, save_predictions: o.SavePredictions = None, limit: o.SegLimit = None,
    classnames: o.SegClassnames = None, templates: o.SegTemplates = None, seed: o.Seed = 0,
    device: o.Device = "auto", dtype: o.Dtype = "fp32", batch_size: o.BatchSize = 64, workers: o.Workers = None,
    cache_dir: o.CacheDir = None, no_cache: o.NoCache = False,
    output_dir: o.OutputDir = None, run_name: o.RunName = None, overwrite: o.Overwrite = False,
    dry_run: o.DryRun = False, json: o.Json = False, no_progress: o.NoProgress = False,
) -> None:
    """Training-free zero-shot segmentation (SCLIP/NACLIP protocol): mIoU of dense CLIP features vs class prompts.

    Results go to <output>/cls/ (pooling plays no part here). The feature store keeps only the text
    classifier (per-pixel outputs are not cached); --batch-size counts 224x224 windows.
    """
    run_command(["zero-shot-seg"], {**locals(), "pooling": ["cls"]})


@app.command("evaluators")
def list_evaluators() -> None:
    """List the registered evaluators: taps, splits and needs."""
    from ..evaluators import available, get
    from ..report.console import console

    for name in available():
        c = get(name)
        console.print(f"[bold]{name}[/]: {c.description} taps={','.join(sorted(c.taps))} "
                      f"splits={','.join(c.splits)} needs={','.join(sorted(c.needs)) or '-'}")
