"""`lastvit-eval patch-hit`: point-in-box hit ratio on ImageNet-style boxes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..app import app
from ..data.filters import FilterSpec
from ..engine.cache import CacheSpec
from ..engine.device import EngineSpec
from ..errors import InputError
from ..models import LoadOptions, load_model
from . import options as o


@app.command("patch-hit")
@o.grouped(load=o.load_group, engine=o.engine_group_full, cache=o.cache_group_sharded)
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
    masks: Annotated[Path | None, typer.Option("--masks", help="Segmentation masks instead of boxes: COCO json "
                                               "(polygons/RLE) or a folder of <image_id>.npy.",
                                               rich_help_panel=o.DATA)] = None,
    hit_rule: Annotated[str | None, typer.Option("--hit-rule", help="any (top patch overlaps the object; the paper's "
                                                 "rule, default with boxes), center, majority (default with masks).",
                                                 rich_help_panel=o.DATA)] = None,
    fg_fraction: Annotated[float, typer.Option("--fg-fraction", help="majority rule: a patch is foreground when more "
                                               "than this fraction of it is inside.", rich_help_panel=o.DATA)] = 0.5,
    limit: Annotated[int | None, typer.Option("--limit", help="Evaluate only the first N kept images.",
                                              rich_help_panel=o.DATA)] = None,
    pooling: o.Pooling = "last",
    topk: o.TopK = 1,
    sigma: o.Sigma = None,
    score_formula: o.ScoreFormula = "code",
    load: LoadOptions = None,
    engine: EngineSpec = None,
    cache: CacheSpec = None,
    output_dir: o.OutputDir = None,
    run_name: o.RunName = None,
    no_progress: o.NoProgress = False,
) -> None:
    """Point-in-box: how often the patch most similar to the pooled token lies inside the object's box."""
    from ..engine.distributed import session
    from ..pipelines.patch_hit import run_patch_hit
    from ..report.console import console, print_counts, print_result

    hit_rule = hit_rule or ("majority" if masks else "any")
    if hit_rule not in ("any", "center", "majority"):
        raise InputError(f"--hit-rule {hit_rule!r}: use any, center or majority")
    if not 0 < max_box_area <= 1:
        raise InputError(f"--max-box-area {max_box_area}: must be in (0, 1]")
    spec = o.pooling_spec(pooling, topk, sigma, score_formula)
    model = load_model(checkpoint, load)
    filt = FilterSpec(single_object=single_object, max_box_area=None if max_box_area >= 1 else max_box_area)
    out = o.run_dir(output_dir, run_name, "patch-hit", model.name, spec.name)
    with session(engine.device):
        res = run_patch_hit(model, imagenet_root, boxes, filt, spec, hit_rule, engine, out,  # type: ignore[arg-type]
                            progress=not no_progress, limit=limit, cache=cache, masks=masks,
                            fg_fraction=fg_fraction)
    if res is None:  # a torch.distributed rank other than 0: its shards are in the cache, rank 0 reports
        return
    info = res.result.info
    counts = {"found": info["found"], **{f"dropped: {k}": v for k, v in info["dropped"].items()},
              "evaluated": info["evaluated"]}
    print_counts(f"{imagenet_root}", counts)
    print_result(res.result, f"patch-hit  {model.name}  pooling={spec.name}  rule={hit_rule}  "
                             f"({info['images_per_second']} img/s, {res.record['provenance']['device']}, {engine.dtype})")
    c = info["cache"]
    if c.get("key"):
        console.print(f"feature cache {c['key'][:12]}: {c['reused']} shard(s) reused, {c['computed']} computed"
                      + (f", {len(c['corrupt'])} corrupt recomputed" if c["corrupt"] else ""))
    console.print(f"results written to [bold]{res.out_dir}[/]")
