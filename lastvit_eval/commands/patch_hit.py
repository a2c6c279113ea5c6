"""`lastvit-eval patch-hit`: point-in-box hit ratio on ImageNet-style boxes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..app import app
from ..data.filters import FilterSpec
from ..errors import InputError
from ..models import load_model
from . import options as o


@app.command("patch-hit")
def patch_hit(
    checkpoint: o.Checkpoint,
    imagenet_root: Annotated[Path, typer.Option("--imagenet-root", "-r", help="Root with val/<wnid>/*.JPEG or "
                                                "val/*.JPEG.", rich_help_panel=o.DATA)],
    boxes: Annotated[Path | None, typer.Option("--boxes", help="VOC XML folder, LOC_val_solution.csv or COCO json "
                                               "(default: found under the root).", rich_help_panel=o.DATA)] = None,
    single_object: Annotated[bool, typer.Option("--single-object/--any-objects", help="Keep only images with "
                                                "exactly one box (the paper's filter).", rich_help_panel=o.DATA)] = True,
    max_box_area: Annotated[float, typer.Option("--max-box-area", help="Keep boxes smaller than this fraction of "
                                                "the image (the paper: 0.25); 1 disables.", rich_help_panel=o.DATA)] = 0.25,
    hit_rule: Annotated[str, typer.Option("--hit-rule", help="any (top patch overlaps the box; the paper), center, "
                                          "majority.", rich_help_panel=o.DATA)] = "any",
    limit: Annotated[int | None, typer.Option("--limit", help="Evaluate only the first N kept images.",
                                              rich_help_panel=o.DATA)] = None,
    pooling: o.Pooling = "last",
    topk: o.TopK = 1,
    sigma: o.Sigma = None,
    score_formula: o.ScoreFormula = "code",
    trust_checkpoint: o.TrustCheckpoint = False,
    ignore_keys: o.IgnoreKeys = None,
    num_heads: o.NumHeads = None,
    checkpoint_key: o.CheckpointKey = None,
    family: o.Family = None,
    quick_gelu: o.QuickGelu = None,
    device: o.Device = "auto",
    dtype: o.Dtype = "fp32",
    batch_size: o.BatchSize = 64,
    workers: o.Workers = None,
    on_bad_image: o.OnBadImage = "skip",
    output_dir: o.OutputDir = None,
    run_name: o.RunName = None,
    no_progress: o.NoProgress = False,
) -> None:
    """Point-in-box: how often the patch most similar to the pooled token lies inside the object's box."""
    from ..pipelines.patch_hit import run_patch_hit
    from ..report.console import console, print_counts, print_result

    if hit_rule not in ("any", "center", "majority"):
        raise InputError(f"--hit-rule {hit_rule!r}: use any, center or majority")
    if not 0 < max_box_area <= 1:
        raise InputError(f"--max-box-area {max_box_area}: must be in (0, 1]")
    spec = o.pooling_spec(pooling, topk, sigma, score_formula)
    engine = o.engine_spec(device, dtype, batch_size, workers, on_bad_image)
    model = load_model(checkpoint, o.load_options(trust_checkpoint, ignore_keys, num_heads, checkpoint_key, family,
                                                  quick_gelu))
    filt = FilterSpec(single_object=single_object, max_box_area=None if max_box_area >= 1 else max_box_area)
    out = o.run_dir(output_dir, run_name, "patch-hit", model.name, spec.name)
    res = run_patch_hit(model, imagenet_root, boxes, filt, spec, hit_rule, engine, out,  # type: ignore[arg-type]
                        progress=not no_progress, limit=limit)
    info = res.result.info
    counts = {"found": info["found"], **{f"dropped: {k}": v for k, v in info["dropped"].items()},
              "evaluated": info["evaluated"]}
    print_counts(f"{imagenet_root}", counts)
    print_result(res.result, f"patch-hit  {model.name}  pooling={spec.name}  rule={hit_rule}  "
                             f"({info['images_per_second']} img/s, {res.record['provenance']['device']}, {dtype})")
    console.print(f"results written to [bold]{res.out_dir}[/]")
