"""Device and precision choices, resolved once and recorded with results."""

from __future__ import annotations

import contextlib
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
    compile: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
