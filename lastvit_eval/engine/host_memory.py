"""Host memory: keep freed blocks in the process for the next batch instead of returning them to the kernel.

glibc's malloc serves blocks above its mmap threshold (128 KiB, raised dynamically up to 32 MiB) with
fresh `mmap`s and hands freed memory at the top of the heap back to the kernel. A ViT-B/16 forward at
batch 32 allocates activations of 10-40 MB per layer; in the pipeline, where decoding and evaluation
allocate and free between forwards, those came back as fresh pages every batch: about 1.1 million
minor page faults per 96 images, the forward running 25-40% slower than the same forward in a tight
loop (`results/bench_patch_hit.md`). Raising the mmap threshold to 1 GiB and the trim threshold to
2 GiB keeps the memory in the heap, where the next batch reuses it (0 faults in steady state). The cost
is that the process keeps its peak heap until it exits.

Applied once, by the forward loop's set-up, on Linux with glibc only; left alone where the user chose
the allocator's settings (MALLOC_* variables, GLIBC_TUNABLES, or LD_PRELOAD, e.g. jemalloc or tcmalloc).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int

_state: str | None = None  # what `keep_freed_memory` did, once decided


def _user_chose() -> str | None:
    env = os.environ
    if any(k.startswith("MALLOC_") for k in env) or "malloc" in env.get("GLIBC_TUNABLES", ""):
        return "left alone (MALLOC_* / GLIBC_TUNABLES set)"
    if env.get("LD_PRELOAD"):
        return "left alone (LD_PRELOAD set)"
    return None


def _set_thresholds() -> str:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "left alone (no mallopt)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return "kept (mmap threshold 1 GiB, trim threshold 2 GiB)" if ok else "left alone (mallopt refused)"


def keep_freed_memory() -> str:
    """Set glibc's mmap and trim thresholds (once per process); returns what was done, for run info."""
    global _state
    if _state is None:
        _state = _user_chose() or (_set_thresholds() if sys.platform.startswith("linux") else "left alone (not Linux)")
    return _state
