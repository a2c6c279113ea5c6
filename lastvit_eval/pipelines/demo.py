"""The demo: both bundled tiny checkpoints (CLS-trained and LAST-trained) through every evaluator.

One forward pass per checkpoint and image set; <out>/<checkpoint>/<pooling>/ per run, an
aggregated report (the CI baseline format), a paired LAST-vs-CLS comparison and a heatmap picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:  # torch and pandas load only when the demo runs: `demo --where` answers at once
    import pandas as pd

    from ..engine.device import EngineSpec
    from ..engine.store import StoreSpec

EVALUATORS = ["patch-hit", "knn", "linear-probe", "classify"]
CHECKPOINTS = ("tiny_cls.pth", "tiny_last.pth")
TRAINED_WITH = ("CLS", "LAST")  # the pooling each bundled checkpoint was trained with


def demo_poolings() -> tuple:
    """Both models are evaluated with both poolings: cls, and last with k=1 (the paper's)."""
    from ..pooling import PoolingSpec

    return PoolingSpec("cls"), PoolingSpec("last", topk=1)


def bundled() -> tuple[Path, list[Path]]:
    base = Path(str(resources.files("lastvit_eval") / "demo"))
    data, ckpts = base / "data", [base / "checkpoints" / c for c in CHECKPOINTS]
    missing = [str(p) for p in [data, *ckpts] if not p.exists()]
    if missing:
        raise InputError(f"bundled demo files are missing ({', '.join(missing)}); reinstall lastvit-eval")
    return data, ckpts


@dataclass
class DemoOutput:
    runs: list[Path]
    report: dict
    comparison: dict
    pictures: list[Path]
    summary: list  # the paired comparison's (quantity, value) rows
    table: pd.DataFrame  # the aggregated long table (one row per run and metric)


def run_demo(out: Path, engine: EngineSpec, progress: bool = True, ks: tuple[int, ...] = (10, 20),
             store: StoreSpec | None = None) -> DemoOutput | None:
    from ..data.filters import FilterSpec
    from ..engine.store import StoreSpec
    from ..evaluators.knn import KnnOptions
    from ..pipeline import execute
    from ..plan import RunRequest, build_plan
    from ..report import aggregate as agg
    from ..report import compare as cmp
    from ..report.console import console
    from .visualize import run_visualize

    data, ckpts = bundled()
    store = store or StoreSpec()
    runs, pictures = [], []
    poolings = demo_poolings()
    # each model with the pooling it was trained with: cls for tiny_cls, last for tiny_last
    for n, (ckpt, own_pooling, trained) in enumerate(zip(ckpts, poolings, TRAINED_WITH, strict=True), 1):
        if progress:
            console.print(f"[bold]demo {n}/{len(ckpts)}[/]: {ckpt.name} (trained with {trained} pooling): "
                          f"{', '.join(EVALUATORS)} with poolings {', '.join(p.name for p in poolings)}; forward "
                          "passes over the val (test) and train images, then pictures")
        req = RunRequest(evaluators=tuple(EVALUATORS), options={"knn": KnnOptions(ks=ks)}, checkpoint=str(ckpt),
                         poolings=poolings, root=data, engine=engine, store=store, output_dir=out / ckpt.stem, dataset_name="demo",
                         overwrite=True, progress=progress)
        plan = build_plan(req)
        if execute(plan) is None:
            continue  # a torch.distributed rank other than 0 only extracts
        runs += [out / ckpt.stem / p.name for p in poolings]
        pictures += run_visualize(plan.model, data, None, FilterSpec(), own_pooling, engine,
                                  out / "pictures" / ckpt.stem, sample=8, seed=0, progress=progress, store=store)
    from ..engine.distributed import current

    if not current().is_main:
        return None
    long = agg.aggregate(runs)
    report = agg.write_report(long, out)
    # the paper's comparison: each model with the pooling it was trained with
    result = cmp.compare_runs(out / "tiny_cls" / "cls", out / "tiny_last" / "last-k1", "patch_hit.top1")
    comparison = cmp.write_comparison(result, out / "compare")
    return DemoOutput(runs=runs, report=report, comparison=comparison, pictures=pictures,
                      summary=result.summary_rows(), table=long)
