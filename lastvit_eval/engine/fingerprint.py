"""What makes stored features stale besides the model: the code that shapes them and the libraries.

The fingerprint hashes the source of every module between the image file and a tap (decoding,
transforms, model adapters, pooling, the forward) and the versions of the libraries those call, so
editing LAST or an adapter, or upgrading torch, never silently reuses features computed before.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent
# Relative to the package: every file whose code changes what a tap holds.
SHAPING = ("models", "pooling.py", "masking.py", "data/transform.py", "data/decode.py", "engine/dataset.py",
           "engine/taps.py", "engine/internals.py", "engine/gpu_decode.py", "engine/device.py")
LIBRARIES = ("torch", "torchvision", "timm", "open_clip_torch", "pillow", "numpy", "safetensors")


def _files() -> list[Path]:
    out: list[Path] = []
    for rel in SHAPING:
        p = PACKAGE / rel
        if p.is_dir():
            out += sorted(p.rglob("*.py"))
        elif p.is_file():
            out.append(p)
    return out


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    h = hashlib.sha256()
    for p in _files():
        h.update(str(p.relative_to(PACKAGE)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out
