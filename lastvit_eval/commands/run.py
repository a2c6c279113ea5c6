"""`lastvit-eval run` (several evaluators, one forward pass) and the single-evaluator shortcuts
`knn`, `linear-probe`, `classify`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..app import app
from ..engine.cache import CacheSpec
from ..engine.device import EngineSpec
from ..errors import InputError
from ..models import LoadOptions
from . import options as o

ImagenetRoot = Annotated[Path | None, typer.Option("--imagenet-root", "-r", help="ImageNet-style root: val/ "
                         "(test), train/ (k-NN / probe), boxes for patch-hit.", rich_help_panel=o.DATA)]
Train = Annotated[Path | None, typer.Option("--train", help="Training images: ImageFolder root or CSV (path,label).",
                                            rich_help_panel=o.DATA)]
Test = Annotated[Path | None, typer.Option("--test", help="Test images: ImageFolder root or CSV (path,label).",
                                           rich_help_panel=o.DATA)]
TrainPerClass = Annotated[int | None, typer.Option("--train-per-class", min=1, help="Few-shot: at most N training "
                                                   "images per class (seeded).", rich_help_panel=o.DATA)]
Seed = Annotated[int, typer.Option("--seed", help="Seed for subsets, hold-outs and bootstraps.",
                                   rich_help_panel=o.DATA)]
Poolings = Annotated[list[str] | None, typer.Option("--pooling", "-p", help="cls | gap | last | last:k=5,... "
                                                    "(repeatable; default last).", rich_help_panel=o.MODEL)]
OptionalCheckpoint = Annotated[str | None, typer.Option("--checkpoint", "-c", help="Checkpoint file or hub name "
                              "(not needed with --test-features).", rich_help_panel=o.MODEL)]
TrainFeatures = Annotated[Path | None, typer.Option("--train-features", help="Training features written by "
                          "`extract` (.npz / .safetensors) instead of a model and images.", rich_help_panel=o.DATA)]
TestFeatures = Annotated[Path | None, typer.Option("--test-features", help="Test features written by `extract`.",
                                                   rich_help_panel=o.DATA)]
KNN, PROBE = "k-NN", "Linear probe"
Ks = Annotated[str, typer.Option("--ks", help="Comma-separated k values.", rich_help_panel=KNN)]
Temperature = Annotated[float, typer.Option("--temperature", help="Vote temperature T: weights exp(sim / T).",
                                            rich_help_panel=KNN)]
WeightDecays = Annotated[str | None, typer.Option(
    "--weight-decays", help="Comma-separated weight decays to choose from on the hold-out (0 = unpenalized; "
    "default 3e-3,1e-3,3e-4,1e-4,3e-5,1e-5,0). One value: no selection.", rich_help_panel=PROBE)]
Solver = Annotated[str, typer.Option("--solver", help="lbfgs (full-batch, weight-decay path) or adam "
                                     "(minibatch, lr x weight-decay grid trained jointly).", rich_help_panel=PROBE)]
HoldoutFraction = Annotated[float, typer.Option("--holdout-fraction", help="Share of each training class held out "
                                                "for the selection.", rich_help_panel=PROBE)]
ProbePrecision = Annotated[str, typer.Option("--probe-precision", help="lbfgs matmuls: bf16 (fp32 accumulation; "
                                             "fastest on CPUs with bf16) or fp32.", rich_help_panel=PROBE)]
Lrs = Annotated[str | None, typer.Option("--lrs", help="adam: comma-separated learning rates (default 2e-3).",
                                         rich_help_panel=PROBE)]


def _datasets(imagenet_root, train, test, train_per_class, seed, need_train):
    from ..data.recognition import few_shot, from_imagenet, load_labeled

    if test is not None:
        val = load_labeled(test)
    elif imagenet_root is not None:
        val = from_imagenet(imagenet_root, "val")
    else:
        raise InputError("give --imagenet-root or --test")
    tr = None
    if need_train:
        if train is not None:
            tr = load_labeled(train)
        elif imagenet_root is not None and (Path(imagenet_root) / "train").is_dir():
            tr = from_imagenet(imagenet_root, "train")
        else:
            raise InputError("k-NN / linear probe need a training set: --train, or train/ under --imagenet-root")
        if train_per_class:
            tr = few_shot(tr, train_per_class, seed)
    return val, tr


def _numbers(option: str, text: str, kind: type) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{option} {text!r}: expected comma-separated {kind.__name__}s") from None
    if not values:
        raise InputError(f"{option}: give at least one value")
    return values


def recognition_options(ks: Ks = "10,20,100,200", temperature: Temperature = 0.07,
                        weight_decays: WeightDecays = None, solver: Solver = "lbfgs",
                        holdout_fraction: HoldoutFraction = 0.1, probe_precision: ProbePrecision = "bf16",
                        lrs: Lrs = None) -> dict:
    """k-NN and linear-probe settings from the command line (the evaluators check the values' ranges)."""
    from ..evaluators.linear_probe import SOLVERS
    from ..evaluators.logreg_lbfgs import PRECISIONS

    if solver not in SOLVERS or probe_precision not in PRECISIONS:
        raise InputError(f"--solver must be one of {', '.join(SOLVERS)} and --probe-precision one of "
                         f"{', '.join(PRECISIONS)}; got {solver!r}, {probe_precision!r}")
    probe = {"solver": solver, "holdout_fraction": holdout_fraction}
    if weight_decays is not None:
        probe["weight_decays"] = _numbers("--weight-decays", weight_decays, float)
    if solver == "lbfgs":
        probe["precision"] = probe_precision
    if lrs is not None:
        probe["lrs"] = _numbers("--lrs", lrs, float)
    return {"ks": _numbers("--ks", ks, int), "temperature": temperature, "probe": probe}


def run_job(evaluators: list[str], checkpoint, imagenet_root, train, test, train_per_class, seed, poolings, recog,
            load_opts, engine, output_dir, run_name, no_progress, boxes=None, masks=None, cache=None):
    from ..data.filters import FilterSpec
    from ..models import load_model
    from ..pipelines.run import PibOptions, RunConfig, run_evaluators
    from ..pooling import PoolingSpec
    from ..report.console import console, print_result

    specs = [PoolingSpec.parse(p) for p in (poolings or ["last"])]
    model = load_model(checkpoint, load_opts)
    val, tr = _datasets(imagenet_root, train, test, train_per_class, seed,
                        any(e in ("knn", "linear-probe") for e in evaluators))
    pib = None
    if "patch-hit" in evaluators:
        if imagenet_root is None:
            raise InputError("patch-hit needs --imagenet-root (images with boxes)")
        pib = PibOptions(root=imagenet_root, boxes=boxes, filt=FilterSpec(), masks=masks,
                         rule="majority" if masks else "any")
    name = Path(imagenet_root or test).name  # type: ignore[arg-type]
    cfg = RunConfig(evaluators=evaluators, poolings=specs, val=val, train=tr, pib=pib, seed=seed,
                    dataset_name=name, **recog)
    out = o.run_dir(output_dir, run_name, "-".join(evaluators), model.name)
    from ..engine.distributed import session

    with session(engine.device):
        results = run_evaluators(model, cfg, engine, out, cache=cache, progress=not no_progress)
    if not results:  # a torch.distributed rank other than 0: its shards are in the cache, rank 0 reports
        return results
    for pooling, (res, _) in results.items():
        for r in res:
            print_result(r, f"{r.evaluator}  {model.name}  pooling={pooling}")
    console.print(f"results written to [bold]{out}[/]")
    return results


@app.command("run")
@o.grouped(recog=recognition_options, load=o.load_group, engine=o.engine_group, cache=o.cache_group)
def run(
    checkpoint: o.Checkpoint,
    evaluators: Annotated[str, typer.Option("--evaluators", "-e", help="Comma-separated: patch-hit, knn, "
                                            "linear-probe, classify.")] = "patch-hit,knn",
    imagenet_root: ImagenetRoot = None,
    train: Train = None,
    test: Test = None,
    boxes: Annotated[Path | None, typer.Option("--boxes", help="patch-hit boxes (default: found under the root).",
                                               rich_help_panel=o.DATA)] = None,
    masks: Annotated[Path | None, typer.Option("--masks", help="patch-hit masks instead of boxes.",
                                               rich_help_panel=o.DATA)] = None,
    train_per_class: TrainPerClass = None,
    seed: Seed = 0,
    pooling: Poolings = None,
    recog: dict = None,
    load: LoadOptions = None,
    engine: EngineSpec = None,
    cache: CacheSpec = None,
    output_dir: o.OutputDir = None,
    run_name: o.RunName = None,
    no_progress: o.NoProgress = False,
) -> None:
    """Run several evaluators over one forward pass (per pooling: results/<run>/<pooling>/ when several)."""
    names = [e.strip() for e in evaluators.split(",") if e.strip()]
    if not names:
        raise InputError("--evaluators: give at least one evaluator")
    run_job(names, checkpoint, imagenet_root, train, test, train_per_class, seed, pooling, recog, load, engine,
            output_dir, run_name, no_progress, boxes=boxes, masks=masks, cache=cache)


def _single(name: str, doc: str):
    def command(
        checkpoint: OptionalCheckpoint = None,
        train_features: TrainFeatures = None,
        test_features: TestFeatures = None,
        imagenet_root: ImagenetRoot = None,
        train: Train = None,
        test: Test = None,
        train_per_class: TrainPerClass = None,
        seed: Seed = 0,
        pooling: Poolings = None,
        recog: dict = None,
        load: LoadOptions = None,
        engine: EngineSpec = None,
        cache: CacheSpec = None,
        output_dir: o.OutputDir = None,
        run_name: o.RunName = None,
        no_progress: o.NoProgress = False,
    ) -> None:
        if test_features is not None:
            from ..pipelines.features_eval import evaluate_feature_files
            from ..report.console import console, print_result

            out = o.run_dir(output_dir, run_name, name, test_features.stem)
            for pooled, (results, _) in evaluate_feature_files([name], train_features, test_features, pooling, out,
                                                               seed=seed, **recog).items():
                for r in results:
                    print_result(r, f"{r.evaluator}  {test_features.name}  pooling={pooled}")
            console.print(f"results written to [bold]{out}[/]")
            return
        if checkpoint is None:
            raise InputError("give --checkpoint (with images) or --test-features")
        run_job([name], checkpoint, imagenet_root, train, test, train_per_class, seed, pooling, recog, load, engine,
                output_dir, run_name, no_progress, cache=cache)

    command.__doc__ = doc
    command.__name__ = name.replace("-", "_")
    app.command(name)(o.grouped(recog=recognition_options, load=o.load_group, engine=o.engine_group,
                                 cache=o.cache_group)(command))


_single("knn", "k-NN classification (DINO protocol: cosine, exp(sim/T) votes) of pooled features.")
_single("linear-probe", "Multinomial logistic regression on frozen pooled features (hyperparameters on a "
        "hold-out of the training split).")
_single("classify", "Accuracy of the checkpoint's own head on the pooled token.")
