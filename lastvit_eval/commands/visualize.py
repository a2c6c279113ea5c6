"""`lastvit-eval visualize`: PNG grids of patch scores, boxes, top patches and LAST votes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..app import app
from ..data.filters import FilterSpec
from ..models import load_model
from . import options as o


@app.command("visualize")
def visualize(
    checkpoint: o.Checkpoint,
    imagenet_root: Annotated[Path, typer.Option("--imagenet-root", "-r", help="Root with val/<wnid>/*.JPEG.",
                                                rich_help_panel=o.DATA)],
    boxes: Annotated[Path | None, typer.Option("--boxes", help="Boxes (default: found under the root).",
                                               rich_help_panel=o.DATA)] = None,
    images: Annotated[list[str] | None, typer.Option("--image", help="Image id to draw (repeatable).",
                                                     rich_help_panel=o.DATA)] = None,
    sample: Annotated[int, typer.Option("--sample", min=1, help="Otherwise draw this many kept images.",
                                        rich_help_panel=o.DATA)] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample.", rich_help_panel=o.DATA)] = 0,
    pooling: o.Pooling = "last",
    topk: o.TopK = 1,
    sigma: o.Sigma = None,
    score_formula: o.ScoreFormula = "code",
    trust_checkpoint: o.TrustCheckpoint = False,
    ignore_keys: o.IgnoreKeys = None,
    num_heads: o.NumHeads = None,
    device: o.Device = "auto",
    dtype: o.Dtype = "fp32",
    output_dir: o.OutputDir = None,
    no_progress: o.NoProgress = False,
) -> None:
    """Draw where the model looks: heatmap over the crop, box, top patch; score distributions; vote maps."""
    from ..pipelines.visualize import run_visualize
    from ..report.console import console

    spec = o.pooling_spec(pooling, topk, sigma, score_formula)
    model = load_model(checkpoint, o.load_options(trust_checkpoint, ignore_keys, num_heads))
    out = o.run_dir(output_dir, None, "visualize", model.name, spec.name)
    written = run_visualize(model, imagenet_root, boxes, FilterSpec(), spec,
                            o.engine_spec(device, dtype, 16, 0, "skip"), out, images, sample, seed,
                            progress=not no_progress)
    for p in written:
        console.print(f"wrote [bold]{p}[/]")
