"""torch.distributed for extraction: ranks share shards through the cache folder, rank 0 assembles.

Launch with torchrun (`torchrun --nproc-per-node N -m lastvit_eval.cli ...`); the process group is set
up from its environment only when WORLD_SIZE > 1: NCCL with `cuda:LOCAL_RANK` on GPUs, gloo on CPU.
Shard s is extracted by rank `s % world`, so no image is done twice and no padding is needed. Several
nodes work the same way (torchrun `--nnodes` / `--rdzv-endpoint`) as long as every node sees the same
cache folder (a shared filesystem), because finished shards are exchanged as files, not tensors.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def env_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def current() -> DistInfo:
    """This process's place in the default process group ((0, 1) when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=env_local_rank())
    return DistInfo()


def barrier() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@contextmanager
def session(device: str = "auto") -> Iterator[DistInfo]:
    """Join the process group torchrun describes (if WORLD_SIZE > 1) for the duration of a command."""
    if env_world() <= 1 or not dist.is_available() or dist.is_initialized():
        yield current()
        return
    from .device import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl", device_id=dev)
    else:
        dist.init_process_group(backend="gloo")
    try:
        yield current()
    finally:
        dist.destroy_process_group()
