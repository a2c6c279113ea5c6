"""Typed options shared by commands (Annotated aliases), and their conversion into specs."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from ..engine.device import EngineSpec
from ..models import LoadOptions
from ..pooling import PoolingSpec

MODEL = "Model"
DATA = "Data"
ENGINE = "Engine"
OUTPUT = "Output"

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


def engine_spec(device: str, dtype: str, batch_size: int, workers: int | None, on_bad_image: str) -> EngineSpec:
    from ..errors import InputError

    if on_bad_image not in ("skip", "fail"):
        raise InputError(f"--on-bad-image {on_bad_image!r}: use skip or fail")
    if dtype not in ("fp32", "bf16", "fp16"):
        raise InputError(f"--dtype {dtype!r}: use fp32, bf16 or fp16")
    return EngineSpec(device=device, dtype=dtype, batch_size=batch_size, workers=workers, on_bad_image=on_bad_image)


def run_dir(output_dir: Path | None, run_name: str | None, *parts: str) -> Path:
    if output_dir is not None:
        return output_dir
    if run_name is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_name = "-".join([*(re.sub(r"[^A-Za-z0-9_.-]+", "_", p) for p in parts if p), stamp])
    return Path("results") / run_name
