"""`lastvit-eval extract`: one forward pass over a split, written to a feature file for later evaluators."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..app import app
from ..engine.device import EngineSpec
from ..errors import InputError
from ..features_io import SUFFIXES
from ..models import LoadOptions, load_model
from . import options as o


@app.command("extract")
@o.grouped(load=o.load_group, engine=o.engine_group)
def extract(
    checkpoint: o.Checkpoint,
    imagenet_root: o.ImagenetRoot,
    output: Annotated[Path, typer.Option("--output", help="Feature file to write: .npz or .safetensors.",
                                         rich_help_panel=o.OUTPUT)],
    split: o.Split = "val",
    limit: o.Limit = None,
    pooling: o.Poolings = None,
    topk: o.TopK = 1,
    sigma: o.Sigma = None,
    score_formula: o.ScoreFormula = "code",
    patch_tokens: Annotated[bool, typer.Option("--patch-tokens", help="Also store the final patch tokens (fp16).",
                                               rich_help_panel=o.OUTPUT)] = False,
    load: LoadOptions = None,
    engine: EngineSpec = None,
    no_progress: o.NoProgress = False,
) -> None:
    """Pooled features (every --pooling), projected embeddings, logits, labels and ids, in one file."""
    from ..features_io import save_features
    from ..pipelines.extract import default_taps, extract_split
    from ..report.console import console, print_counts

    if output.suffix not in SUFFIXES:
        raise InputError(f"--output {output}: use a .npz or .safetensors file name")
    specs = o.pooling_specs(pooling, topk, sigma, score_formula)
    model = load_model(checkpoint, load)
    fs = extract_split(model, imagenet_root, split, specs, default_taps(model, patch_tokens), engine,
                       progress=not no_progress, limit=limit)
    save_features(output, fs)
    print_counts(f"{imagenet_root} ({split})", {"found": fs.meta["dataset"]["images_found"],
                                                "skipped (unreadable)": len(fs.meta["skipped_images"]),
                                                "written": len(fs.image_ids)})
    console.print(f"{len(fs.arrays)} arrays ({', '.join(sorted(fs.arrays))}) written to [bold]{output}[/]")
