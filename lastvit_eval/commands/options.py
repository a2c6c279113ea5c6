"""Typed options shared by commands (Annotated aliases), and their conversion into specs."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from ..engine.cache import DEFAULT_SHARD_SIZE, CacheSpec
from ..engine.device import EngineSpec
from ..models import LoadOptions
from ..pooling import PoolingSpec

MODEL = "Model"
DATA = "Data"
ENGINE = "Engine"
OUTPUT = "Output"
CACHE = "Cache"

Checkpoint = Annotated[
    str,
    typer.Option("--checkpoint", "-c", help="Checkpoint file (.pth/.pt/.safetensors) or hub name "
                 "(torchvision:vit_b_16, timm:NAME, openclip:ARCH/TAG).", rich_help_panel=MODEL),
]
TrustCheckpoint = Annotated[
    bool, typer.Option("--trust-checkpoint", help="Allow pickled Python objects / TorchScript (runs code on load).",
                       rich_help_panel=MODEL)
]
IgnoreKeys = Annotated[
    list[str] | None,
    typer.Option("--ignore-keys", help="Drop checkpoint keys with this prefix before the strict load (repeatable), "
                 "e.g. heads.head.", rich_help_panel=MODEL),
]
NumHeads = Annotated[int | None, typer.Option("--num-heads", help="Attention heads, if not the standard ViT table.",
                                               rich_help_panel=MODEL)]
CheckpointKey = Annotated[str | None, typer.Option("--checkpoint-key", help="Sub-model to load: teacher (DINO default) "
                                                   "or student.", rich_help_panel=MODEL)]
Family = Annotated[str | None, typer.Option("--family", help="Force a family: torchvision, dino, openclip.",
                                            rich_help_panel=MODEL)]
QuickGelu = Annotated[bool | None, typer.Option("--quick-gelu/--no-quick-gelu", help="CLIP: QuickGELU activations "
                                                "(OpenAI weights); default: detect.", rich_help_panel=MODEL)]

Pooling = Annotated[str, typer.Option("--pooling", "-p", help="cls | gap | last", rich_help_panel=MODEL)]
TopK = Annotated[int, typer.Option("--topk", help="LAST: patches kept per channel.", rich_help_panel=MODEL)]
Sigma = Annotated[float | None, typer.Option("--sigma", help="LAST: Gaussian width (default sqrt(D)).",
                                             rich_help_panel=MODEL)]
ScoreFormula = Annotated[str, typer.Option("--score-formula", help="LAST score: code (x/|xf-x|, trained the "
                                           "released weights) or paper (xf/(|xf-x|+eps)).", rich_help_panel=MODEL)]

Device = Annotated[str, typer.Option("--device", help="auto (cuda, then cpu), cpu, cuda, cuda:N.",
                                     rich_help_panel=ENGINE)]
Dtype = Annotated[str, typer.Option("--dtype", help="fp32 | bf16 | fp16 (autocast for the backbone).",
                                    rich_help_panel=ENGINE)]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.",
                                        rich_help_panel=ENGINE)]
Workers = Annotated[int | None, typer.Option("--workers", "-j", min=0, help="Decoding processes (default min(4, CPUs)).",
                                             rich_help_panel=ENGINE)]
ChannelsLast = Annotated[bool, typer.Option("--channels-last", help="channels_last memory format for the "
                                            "patch embedding.", rich_help_panel=ENGINE)]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the backbone (falls back to eager with a "
                                       "warning if compiling fails).", rich_help_panel=ENGINE)]
Decode = Annotated[str, typer.Option("--decode", help="cpu (PIL in workers) or gpu (nvJPEG + resize on the GPU; "
                                     "a parity check against cpu is reported).", rich_help_panel=ENGINE)]
CacheDir = Annotated[Path | None, typer.Option("--cache-dir", help="Feature cache folder (default "
                                               "$LASTVIT_EVAL_CACHE, else $XDG_CACHE_HOME/lastvit-eval, else "
                                               "~/.cache/lastvit-eval).", rich_help_panel=CACHE)]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the feature cache.",
                                       rich_help_panel=CACHE)]
ShardSize = Annotated[int, typer.Option("--shard-size", min=1, help="Images per cache shard (the unit of resume "
                                        "and of distributed work).", rich_help_panel=CACHE)]
OnBadImage = Annotated[str, typer.Option("--on-bad-image", help="skip (listed in the result) or fail.",
                                         rich_help_panel=ENGINE)]

OutputDir = Annotated[Path | None, typer.Option("--output-dir", "-o", help="Where to write results "
                                                "(default results/<run> in the working directory).",
                                                rich_help_panel=OUTPUT)]
RunName = Annotated[str | None, typer.Option("--run-name", help="Run folder name (default: derived from the "
                                             "checkpoint, pooling and time).", rich_help_panel=OUTPUT)]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.", rich_help_panel=OUTPUT)]


def load_options(trust: bool, ignore_keys: list[str] | None, num_heads: int | None,
                 checkpoint_key: str | None = None, family: str | None = None,
                 quick_gelu: bool | None = None) -> LoadOptions:
    return LoadOptions(trust=trust, ignore_keys=tuple(ignore_keys or ()), num_heads=num_heads,
                       checkpoint_key=checkpoint_key, family=family, quick_gelu=quick_gelu)


def pooling_spec(pooling: str, topk: int, sigma: float | None, formula: str) -> PoolingSpec:
    if ":" in pooling:
        return PoolingSpec.parse(pooling)
    return PoolingSpec(kind=pooling, topk=topk, sigma=sigma, formula=formula)  # type: ignore[arg-type]


def engine_spec(device: str, dtype: str, batch_size: int, workers: int | None, on_bad_image: str,
                channels_last: bool = False, compile: bool = False, decode: str = "cpu") -> EngineSpec:
    from ..errors import InputError

    if decode not in ("cpu", "gpu"):
        raise InputError(f"--decode {decode!r}: use cpu or gpu")
    if on_bad_image not in ("skip", "fail"):
        raise InputError(f"--on-bad-image {on_bad_image!r}: use skip or fail")
    if dtype not in ("fp32", "bf16", "fp16"):
        raise InputError(f"--dtype {dtype!r}: use fp32, bf16 or fp16")
    return EngineSpec(device=device, dtype=dtype, batch_size=batch_size, workers=workers, on_bad_image=on_bad_image,
                      channels_last=channels_last, compile=compile, decode=decode)


def cache_spec(cache_dir: Path | None, no_cache: bool, shard_size: int = DEFAULT_SHARD_SIZE) -> CacheSpec:
    return CacheSpec(dir=cache_dir, enabled=not no_cache, shard_size=shard_size)


def run_dir(output_dir: Path | None, run_name: str | None, *parts: str) -> Path:
    if output_dir is not None:
        return output_dir
    if run_name is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_name = "-".join([*(re.sub(r"[^A-Za-z0-9_.-]+", "_", p) for p in parts if p), stamp])
    return Path("results") / run_name


Poolings = Annotated[list[str] | None, typer.Option("--pooling", "-p", help="cls | gap | last | last:k=5,sigma=20 "
                                                    "(repeatable).", rich_help_panel=MODEL)]
ImagenetRoot = Annotated[Path, typer.Option("--imagenet-root", "-r", help="Root with <split>/<wnid>/*.JPEG or "
                                            "<split>/*.JPEG (+ meta/val.txt).", rich_help_panel=DATA)]
Split = Annotated[str, typer.Option("--split", help="Image folder under the root: val or train.",
                                    rich_help_panel=DATA)]
Limit = Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N images (sorted paths).",
                                           rich_help_panel=DATA)]


def pooling_specs(poolings: list[str] | None, topk: int, sigma: float | None, formula: str,
                  default: tuple[str, ...] = ("cls", "gap", "last")) -> tuple[PoolingSpec, ...]:
    """Repeatable --pooling into specs, duplicates (by name) removed, order kept."""
    specs: dict[str, PoolingSpec] = {}
    for text in poolings or default:
        spec = pooling_spec(text, topk, sigma, formula)
        specs.setdefault(spec.name, spec)
    return tuple(specs.values())


# Option groups. A command declares a parameter (e.g. `load: LoadOptions`) and `@grouped(load=load_group)`
# puts the group builder's typed options into the command's signature in its place; the command receives
# the built spec. One definition of each group instead of the same option list in every command.

def load_group(trust_checkpoint: TrustCheckpoint = False, ignore_keys: IgnoreKeys = None,
               num_heads: NumHeads = None, checkpoint_key: CheckpointKey = None, family: Family = None,
               quick_gelu: QuickGelu = None) -> LoadOptions:
    return load_options(trust_checkpoint, ignore_keys, num_heads, checkpoint_key, family, quick_gelu)


def engine_group(device: Device = "auto", dtype: Dtype = "fp32", batch_size: BatchSize = 64,
                 workers: Workers = None, on_bad_image: OnBadImage = "skip") -> EngineSpec:
    return engine_spec(device, dtype, batch_size, workers, on_bad_image)


def cache_group(cache_dir: CacheDir = None, no_cache: NoCache = False) -> CacheSpec:
    return cache_spec(cache_dir, no_cache)


def grouped(**builders):
    """Decorator: replace each named parameter by its builder's options (keyword-only, same place)."""
    import functools
    import inspect

    def deco(fn):
        params, members = [], {}
        for p in inspect.signature(fn, eval_str=True).parameters.values():
            if p.name in builders:
                group = list(inspect.signature(builders[p.name], eval_str=True).parameters.values())
                members[p.name] = [g.name for g in group]
                params += group
            else:
                params.append(p)
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]

        @functools.wraps(fn)
        def command(**kwargs):
            for name, build in builders.items():
                kwargs[name] = build(**{m: kwargs.pop(m) for m in members[name]})
            return fn(**kwargs)

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return deco


def engine_group_full(device: Device = "auto", dtype: Dtype = "fp32", batch_size: BatchSize = 64,
                      workers: Workers = None, on_bad_image: OnBadImage = "skip", channels_last: ChannelsLast = False,
                      compile: Compile = False, decode: Decode = "cpu") -> EngineSpec:
    return engine_spec(device, dtype, batch_size, workers, on_bad_image, channels_last, compile, decode)


def cache_group_sharded(cache_dir: CacheDir = None, no_cache: NoCache = False,
                        shard_size: ShardSize = DEFAULT_SHARD_SIZE) -> CacheSpec:
    return cache_spec(cache_dir, no_cache, shard_size)
