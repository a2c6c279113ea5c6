"""`lastvit-eval zero-shot`: CLIP zero-shot classification with any pooling before the projection."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..app import app
from ..engine.device import EngineSpec
from ..models import LoadOptions, load_model
from . import options as o


@app.command("zero-shot")
@o.grouped(load=o.load_group, engine=o.engine_group)
def zero_shot(
    checkpoint: o.Checkpoint,
    imagenet_root: o.ImagenetRoot,
    split: o.Split = "val",
    classnames: Annotated[Path | None, typer.Option("--classnames", help="Class names, one per line in label order "
                                                    "(default: open_clip's ImageNet-1k names).",
                                                    rich_help_panel=o.DATA)] = None,
    templates: Annotated[Path | None, typer.Option("--templates", help="Prompt templates, one per line with {c} or "
                                                   "{} (default: the 80 OpenAI ImageNet templates).",
                                                   rich_help_panel=o.DATA)] = None,
    limit: o.Limit = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Rebuild the text classifier instead of reading the "
                                           "cache ($LASTVIT_EVAL_CACHE).", rich_help_panel=o.ENGINE)] = False,
    pooling: o.Pooling = "last",
    topk: o.TopK = 1,
    sigma: o.Sigma = None,
    score_formula: o.ScoreFormula = "code",
    load: LoadOptions = None,
    engine: EngineSpec = None,
    output_dir: o.OutputDir = None,
    run_name: o.RunName = None,
    no_progress: o.NoProgress = False,
) -> None:
    """Zero-shot top-1/top-5 of a CLIP checkpoint: pooled token -> visual.proj -> text classifier."""
    from ..models.clip_text import load_prompts
    from ..pipelines.zero_shot import run_zero_shot
    from ..report.console import console, print_result

    prompts = load_prompts(classnames, templates)
    spec = o.pooling_spec(pooling, topk, sigma, score_formula)
    model = load_model(checkpoint, load)
    out = o.run_dir(output_dir, run_name, "zero-shot", model.name, spec.name)
    res = run_zero_shot(model, imagenet_root, split, prompts, classnames is None, spec, engine, out,
                        progress=not no_progress, limit=limit, use_cache=not no_cache)
    info = res.result.info
    print_result(res.result, f"zero-shot  {model.name}  pooling={spec.name}  {info['classes']} classes, "
                             f"{info['evaluated']} images ({info['images_per_second']} img/s, {engine.dtype}); "
                             f"text classifier cache: {info['text_classifier']['cache']}")
    console.print(f"results written to [bold]{res.out_dir}[/]")
