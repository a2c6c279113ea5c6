"""The demo: both bundled tiny checkpoints (CLS-trained and LAST-trained) through every evaluator.

One forward pass per checkpoint and image set; results/demo/<checkpoint>/<pooling>/ per run, an
aggregated report (the CI baseline format), a paired LAST-vs-CLS comparison and a heatmap picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

from ..engine.device import EngineSpec
from ..engine.store import StoreSpec
from ..errors import InputError
from ..pooling import PoolingSpec

EVALUATORS = ["patch-hit", "knn", "linear-probe", "classify"]
CHECKPOINTS = ("tiny_cls.pth", "tiny_last.pth")
POOLINGS = (PoolingSpec("cls"), PoolingSpec("last", topk=1))


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
    from ..evaluators.knn import KnnOptions
    from ..pipeline import execute
    from ..plan import RunRequest, build_plan
    from ..report import aggregate as agg
    from ..report import compare as cmp
    from .visualize import run_visualize

    data, ckpts = bundled()
    store = store or StoreSpec()
    runs, pictures = [], []
    # each model with the pooling it was trained with: cls for tiny_cls, last for tiny_last
    for ckpt, own_pooling in zip(ckpts, POOLINGS, strict=True):
        req = RunRequest(evaluators=tuple(EVALUATORS), options={"knn": KnnOptions(ks=ks)}, checkpoint=str(ckpt),
                         poolings=POOLINGS, root=data, engine=engine, store=store, output_dir=out / ckpt.stem, dataset_name="demo",
                         overwrite=True, progress=progress)
        plan = build_plan(req)
        if execute(plan) is None:
            continue  # a torch.distributed rank other than 0 only extracts
        runs += [out / ckpt.stem / p.name for p in POOLINGS]
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
