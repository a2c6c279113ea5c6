"""A run owns its output folder: writable, no stale results of an earlier run, one writer at a time."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from ..errors import InputError

LOCK = ".lastvit-eval.lock"
RESULT_FILES = ("metrics.json", "table.csv", "table.md", "plan.json")


def _holds_results(d: Path) -> bool:
    return any((d / f).exists() for f in RESULT_FILES) or any(d.glob("*_rows.csv"))


def stale_entries(path: Path) -> list[Path]:
    """Result files of an earlier run directly in `path` and in its run sub-folders."""
    out = [p for p in path.iterdir() if p.is_file() and (p.name in RESULT_FILES or p.suffix == ".csv")]
    out += [p for p in path.iterdir() if p.is_dir() and _holds_results(p)]
    return out


def claim_output_dir(path: Path, overwrite: bool = False) -> None:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: output folder is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise InputError(f"{path}: output folder is not writable ({e.strerror or e})") from None
    lock = path / LOCK
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        raise InputError(f"{path}: another run is writing here ({lock.read_text().strip()}); wait for it or "
                         f"remove {lock} if it is gone") from None
    with os.fdopen(fd, "w") as f:
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    stale = stale_entries(path)
    if stale and not overwrite:
        release_output_dir(path)
        raise InputError(f"{path}: holds results of an earlier run ({', '.join(p.name for p in stale[:3])}); "
                         "pass --overwrite to replace them or choose another --output-dir")
    for p in stale:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def release_output_dir(path: Path) -> None:
    (Path(path) / LOCK).unlink(missing_ok=True)
