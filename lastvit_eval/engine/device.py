"""Device and precision choices, resolved once and recorded with results."""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass

import torch

from ..errors import InputError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class EngineSpec:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (autocast; pooling and scores always in fp32)
    batch_size: int = 64
    workers: int | None = None  # None: min(4, cpu count)
    on_bad_image: str = "skip"  # skip | fail
    channels_last: bool = False
    compile: bool = False  # torch.compile the backbone's tokens function (falls back to eager on failure)
    decode: str = "cpu"  # cpu: PIL in DataLoader workers | gpu: nvJPEG decode + resize/crop on the device

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda if present; under torchrun (WORLD_SIZE > 1) `auto`/`cuda` mean `cuda:LOCAL_RANK`."""
    distributed = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and distributed and torch.cuda.is_available():
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0)}"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a valid torch device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return dev


def autocast(device: torch.device, dtype: str):
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype!r}: use fp32, bf16 or fp16")
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def with_low_precision_linears(module: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """A copy of `module` whose nn.Linear weights (outside nn.MultiheadAttention) are already in `dtype`.

    Under CPU autocast every linear casts its fp32 weight to bf16 on every call: for ViT-B/16 that is 86M
    weights re-cast per batch, about a tenth of the bf16 forward's CPU time. Autocast's cast is the same
    `.to(bf16)` as this one and a weight already in bf16 is not cast again, so the outputs are bit for bit
    those of autocast over the original module (tested). Linears inside nn.MultiheadAttention stay fp32: a
    bf16 projection there changes which attention kernel runs, and with it the numbers. The copy shares
    every other tensor with `module` (only the converted weights take new memory); `module` is unchanged.
    """
    import copy

    shared = {id(t): t for t in (*module.parameters(), *module.buffers())}
    fast = copy.deepcopy(module, memo=shared)
    inside = {id(m) for mha in fast.modules() if isinstance(mha, torch.nn.MultiheadAttention) for m in mha.modules()}
    low = DTYPES[dtype]
    for m in fast.modules():
        if isinstance(m, torch.nn.Linear) and id(m) not in inside:
            for name, p in list(m.named_parameters(recurse=False)):
                if p.is_floating_point():
                    setattr(m, name, torch.nn.Parameter(p.detach().to(low), requires_grad=False))
    return fast
