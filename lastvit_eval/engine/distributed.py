"""torch.distributed for extraction: ranks fill the shared feature store, rank 0 assembles and evaluates.

Launch with torchrun (`torchrun --nproc-per-node N -m lastvit_eval.cli ...`); the process group is set
up from its environment only when WORLD_SIZE > 1: NCCL with `cuda:LOCAL_RANK` on GPUs, gloo on CPU,
with a timeout on every collective (`--barrier-timeout`). Chunks of missing images go to ranks in
turn, so no image is done twice. Several nodes work the same way as long as every node sees the same
store folder, because finished shards are exchanged as files, not tensors.

Failure: a rank that meets an error writes it to an abort file that every rank polls between batches,
then all ranks meet in `agree`, where every rank raises the first failing rank's message. So one bad
image under `--on-bad-image fail` ends every rank within a batch, not at an outside launcher's timeout.
"""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import InputError

DEFAULT_TIMEOUT_S = 1800.0
_state = {"run_id": None}


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


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def current() -> DistInfo:
    """This process's place in the default process group ((0, 1) when there is none)."""
    if active():
        return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=env_local_rank())
    return DistInfo()


def run_id() -> str:
    """An id all ranks of this run share (for the abort file)."""
    if _state["run_id"] is None:
        _state["run_id"] = uuid.uuid4().hex[:12]
    return _state["run_id"]


def abort_file(store_root: Path) -> Path:
    return Path(store_root) / "aborts" / run_id()


def signal_abort(store_root: Path, message: str) -> None:
    path = abort_file(store_root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"rank {current().rank}: {message}\n")
    except OSError:
        pass  # the collective in `agree` still carries the message


def abort_message(store_root: Path) -> str | None:
    path = abort_file(store_root)
    if not path.exists():
        return None
    try:
        return path.read_text().strip() or "another rank failed"
    except OSError:
        return "another rank failed"


def barrier() -> None:
    if not active():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def agree(error: str | None) -> None:
    """Every rank reports; if any failed, every rank raises that rank's message (one line)."""
    if not active() or dist.get_world_size() == 1:
        if error:
            raise InputError(error)
        return
    status: list = [None] * dist.get_world_size()
    dist.all_gather_object(status, (dist.get_rank(), error))
    failed = [(r, e) for r, e in status if e]
    if failed:
        r, e = failed[0]
        err = InputError(e if e.startswith("rank ") else f"rank {r}: {e}")
        err.collective = True  # every rank raises this one: they can still leave together
        raise err


@contextmanager
def session(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[DistInfo]:
    """Join the process group torchrun describes (if WORLD_SIZE > 1) for the duration of a command."""
    if env_world() <= 1 or not dist.is_available() or dist.is_initialized():
        yield current()
        return
    from .device import resolve_device

    dev = resolve_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl", device_id=dev, timeout=timeout)
    else:
        dist.init_process_group(backend="gloo", timeout=timeout)
    ids = [uuid.uuid4().hex[:12] if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(ids, src=0)
    _state["run_id"] = ids[0]
    together = False
    try:
        yield current()
        together = True
    except InputError as e:
        together = getattr(e, "collective", False)
        raise
    finally:
        if together:  # leave together: a rank tearing its group down while another still uses it can abort
            barrier()
        dist.destroy_process_group()
        _state["run_id"] = None
