"""`lastvit-eval extract`: a split's features (through the feature store) written to one file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..app import app
from ..errors import InputError
from . import options as o
from .run import check_choices

Output = Annotated[Path, typer.Option("--output", "-o", help="Feature file to write: .npz or .safetensors.",
                                      rich_help_panel=o.OUTPUT)]
PatchTokens = Annotated[bool, typer.Option("--patch-tokens", help="Also store the final patch tokens (fp16).",
                                           rich_help_panel=o.OUTPUT)]


@app.command("extract")
def extract(
    output: Output,
    checkpoint: o.Checkpoint = None, trust_checkpoint: o.TrustCheckpoint = False, ignore_keys: o.IgnoreKeys = None,
    num_heads: o.NumHeads = None, checkpoint_key: o.CheckpointKey = None, family: o.Family = None,
    quick_gelu: o.QuickGelu = None, arch: o.Arch = None, image_size: o.ImageSize = None,
    pooling: o.Pooling = None, topk: o.TopK = None, sigma: o.Sigma = None, score_formula: o.ScoreFormula = None,
    imagenet_root: o.Root = None, split: o.Split = "val", limit: o.Limit = None,
    patch_tokens: PatchTokens = False,
    device: o.Device = "auto", dtype: o.Dtype = "fp32", batch_size: o.BatchSize = 64, workers: o.Workers = None,
    on_bad_image: o.OnBadImage = "skip", channels_last: o.ChannelsLast = False, compile: o.Compile = False,
    decode: o.Decode = "cpu", barrier_timeout: o.BarrierTimeout = 1800.0,
    cache_dir: o.CacheDir = None, no_cache: o.NoCache = False, shard_size: o.ShardSize = 1024,
    no_progress: o.NoProgress = False,
) -> None:
    """Pooled features (every --pooling; default cls, gap, last), embeddings, logits, labels and ids, in one file."""
    from ..features_io import SUFFIXES

    if output.suffix not in SUFFIXES:
        raise InputError(f"--output {output}: use a .npz or .safetensors file name")
    if output.exists() and output.is_dir():
        raise InputError(f"--output {output}: is a folder, expected a file name")
    if checkpoint is None or imagenet_root is None:
        raise InputError("extract needs --checkpoint and --imagenet-root")
    if not Path(imagenet_root).is_dir():
        raise InputError(f"{imagenet_root}: dataset root is not a folder")
    check_choices({"on_bad_image": on_bad_image, "dtype": dtype, "decode": decode})
    from ..engine.device import EngineSpec  # torch from here on: the checks above answer at once
    from ..engine.distributed import session
    from ..engine.store import StoreSpec
    from ..features_io import save_features
    from ..models import LoadOptions, load_model
    from ..pipelines.extract import default_taps, extract_split
    from ..pooling import PoolingSpec
    from ..report.console import console, print_counts
    from .run import poolings_from

    given = poolings_from(pooling, topk, sigma, score_formula)
    specs = given or (PoolingSpec("cls"), PoolingSpec("gap"), PoolingSpec("last", topk=1))
    engine = EngineSpec(device=device, dtype=dtype, batch_size=batch_size, workers=workers, on_bad_image=on_bad_image,
                        channels_last=channels_last, compile=compile, decode=decode)
    store = StoreSpec(dir=cache_dir, enabled=not no_cache, shard_size=shard_size)
    model = load_model(checkpoint, LoadOptions(trust=trust_checkpoint, ignore_keys=tuple(ignore_keys or ()),
                                               num_heads=num_heads, checkpoint_key=checkpoint_key, family=family,
                                               quick_gelu=quick_gelu, arch=arch,
                                               image_size=image_size), store_root=store.root if store.enabled else None)
    if not given:  # the defaults follow the model: no class token (ResNet, SigLIP), its own attention pool
        specs = tuple(p for p in specs if p.kind != "cls" or model.has_class_token) + (
            (PoolingSpec("map"),) if model.has_map_head else ())
    if any(p.kind == "cls" for p in specs) and not model.has_class_token:
        raise InputError(f"pooling cls: {model.name} has no class token; use gap or last")
    if any(p.kind == "map" for p in specs) and not model.has_map_head:
        raise InputError(f"pooling map: {model.name} has no attention-pool head; use cls, gap or last")
    with session(device, barrier_timeout):
        fs = extract_split(model, imagenet_root, split, specs, default_taps(model, patch_tokens), engine,
                           progress=not no_progress, limit=limit, store=store)
    if fs is None:
        return
    save_features(output, fs)
    s = fs.meta["store"]
    print_counts(f"{imagenet_root} ({split})", {"found": fs.meta["dataset"]["images_found"],
                                                "skipped (unreadable)": len(fs.meta["skipped_images"]),
                                                "read from the feature store": s["images_reused"],
                                                "forwarded": s["images_computed"], "written": len(fs.image_ids)})
    console.print(f"{len(fs.arrays)} arrays ({', '.join(sorted(fs.arrays))}) written to [bold]{output}[/]")
