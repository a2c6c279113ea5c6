"""`lastvit-eval visualize`: PNG grids of patch scores, boxes, top patches and LAST votes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..app import app
from ..errors import InputError
from . import options as o

Images = Annotated[list[str] | None, typer.Option("--image", help="Image id to draw (repeatable).",
                                                  rich_help_panel=o.DATA)]
Sample = Annotated[int, typer.Option("--sample", min=1, help="Otherwise draw this many kept images.",
                                     rich_help_panel=o.DATA)]


@app.command("visualize")
def visualize(
    checkpoint: o.Checkpoint = None, trust_checkpoint: o.TrustCheckpoint = False, ignore_keys: o.IgnoreKeys = None,
    num_heads: o.NumHeads = None, checkpoint_key: o.CheckpointKey = None, family: o.Family = None,
    quick_gelu: o.QuickGelu = None, arch: o.Arch = None, image_size: o.ImageSize = None,
    pooling: o.Pooling = None, topk: o.TopK = None, sigma: o.Sigma = None, score_formula: o.ScoreFormula = None,
    imagenet_root: o.Root = None, boxes: o.Boxes = None, images: Images = None, sample: Sample = 8,
    seed: o.Seed = 0,
    device: o.Device = "auto", dtype: o.Dtype = "fp32", batch_size: o.BatchSize = 16, workers: o.Workers = None,
    cache_dir: o.CacheDir = None, no_cache: o.NoCache = False,
    output_dir: o.OutputDir = None, no_progress: o.NoProgress = False,
) -> None:
    """Draw where the model looks: heatmap over the crop, box, top patch; score distributions; vote maps."""
    if checkpoint is None or imagenet_root is None:
        raise InputError("visualize needs --checkpoint and --imagenet-root")
    if dtype not in ("fp32", "bf16", "fp16"):
        raise InputError(f"--dtype {dtype!r}: use fp32 or bf16 or fp16")
    if not Path(imagenet_root).is_dir():
        raise InputError(f"{imagenet_root}: dataset root is not a folder" if Path(imagenet_root).exists()
                         else f"{imagenet_root}: dataset root does not exist")
    from ..data.filters import FilterSpec
    from ..engine.device import EngineSpec
    from ..engine.store import StoreSpec
    from ..models import LoadOptions, load_model
    from ..pipelines.visualize import run_visualize
    from ..pooling import PoolingSpec
    from ..report.console import console
    from .run import poolings_from

    specs = poolings_from(pooling, topk, sigma, score_formula) or (PoolingSpec("last", topk=1),)
    if len(specs) != 1:
        raise InputError("visualize draws one pooling at a time; give one -p")
    model = load_model(checkpoint, LoadOptions(trust=trust_checkpoint, ignore_keys=tuple(ignore_keys or ()),
                                               num_heads=num_heads, checkpoint_key=checkpoint_key, family=family,
                                               quick_gelu=quick_gelu, arch=arch,
                                               image_size=image_size))
    out = output_dir or (Path("results") / f"visualize-{model.name.rsplit('.', 1)[0]}-{specs[0].name}")
    from ..engine.distributed import session

    with session(device):
        written = run_visualize(model, imagenet_root, boxes, FilterSpec(), specs[0],
                                EngineSpec(device=device, dtype=dtype, batch_size=batch_size, workers=workers), out,
                                images, sample, seed, progress=not no_progress,
                                store=StoreSpec(dir=cache_dir, enabled=not no_cache))
    for p in written:
        console.print(f"wrote [bold]{p}[/]")
