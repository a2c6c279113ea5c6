"""The output folder of a run: checked and claimed before any forward pass, released at the end.

Why before: a run that learns at the end that its folder is a file, read-only, already holds another
run's results, or is being written by a second process has wasted the forward pass (hours on ImageNet).

* `ensure_writable_dir`: the folder exists or can be made, and a probe file can be created and removed.
* `claim_output_dir`: that, plus a lock file (`.lastvit-eval.lock`, created with O_CREAT|O_EXCL and holding
  pid, host and start time) so a second concurrent writer stops with one line naming the holder; a lock left
  by a dead process on this host is taken over. Results of a previous run (metrics.json, *_rows.csv,
  table.csv, in the folder or in its pooling sub-folders) are refused unless `overwrite`, which removes
  exactly those runs' result files (and sub-folders left empty), nothing else.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import time
from pathlib import Path

from ..errors import InputError

LOCK_NAME = ".lastvit-eval.lock"
_TAKEOVER = ".lastvit-eval.lock.takeover"
_RESULT_MARKERS = ("metrics.json", "table.csv")


def ensure_writable_dir(path: Path) -> None:
    """Make `path` (and parents) and prove it writable with a probe file; one-line InputError otherwise."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                where = "is a file" if parent == path else f"lies under {parent}, which is a file"
                raise InputError(f"{path}: output folder {where}")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{path}: cannot create the output folder ({e.strerror or e})") from None
    probe = path / f".lastvit-eval.probe.{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.unlink()
        raise InputError(f"{path}: output folder is not writable ({e.strerror or e})") from None


def previous_results(path: Path) -> list[Path]:
    """Result files of earlier runs in `path` and its immediate sub-folders (the per-pooling runs)."""
    path = Path(path)
    found: list[Path] = []
    for folder in [path, *sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())]:
        found += _result_files(folder)
    return found


def _result_files(folder: Path) -> list[Path]:
    """What a run wrote here: the `files` metrics.json lists, its known names, and the `<namespace>_*.csv`
    files of the namespaces its metrics (or, without metrics.json, its rows) use (e.g. patch_hit_dropped.csv,
    which the pipeline writes beside write_run's files)."""
    record = _read_json(folder / "metrics.json")
    marked = any((folder / m).is_file() for m in _RESULT_MARKERS) or any(folder.glob("*_rows.csv"))
    if not marked:
        return []
    listed = record.get("files") if isinstance(record.get("files"), list) else []
    files = [folder / str(n) for n in listed if "/" not in str(n) and "\\" not in str(n) and str(n) not in ("", ".", "..")]
    namespaces = {k.split(".", 1)[0] for k in (record.get("metrics") or {}) if isinstance(k, str)}
    namespaces |= {p.name[: -len("_rows.csv")] for p in folder.glob("*_rows.csv")}
    files += [folder / n for n in ("metrics.json", "table.csv", "table.md")]
    files += [p for ns in namespaces for p in folder.glob(f"{ns}_*.csv")]
    return sorted({p for p in files if p.is_file()})


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def claim_output_dir(path: Path, overwrite: bool) -> None:
    """Check `path` is usable, lock it for this process, and handle results of a previous run (see module)."""
    path = Path(path)
    ensure_writable_dir(path)
    _take_lock(path)
    try:
        stale = previous_results(path)
        if stale and not overwrite:
            shown = ", ".join(str(p.relative_to(path)) for p in stale[:3])
            more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
            raise InputError(f"{path}: holds results of a previous run ({shown}{more}); "
                             f"use another output folder or --overwrite")
        for p in stale:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise InputError(f"{p}: cannot remove the previous run's file ({e.strerror or e})") from None
        for folder in sorted({p.parent for p in stale} - {path}):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when now empty
    except BaseException:
        release_output_dir(path)
        raise


def release_output_dir(path: Path) -> None:
    """Remove this process's lock (another process's lock is left alone)."""
    lock = Path(path) / LOCK_NAME
    holder = _read_json(lock)
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def _lock_text() -> str:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": now}) + "\n"


def _create_exclusive(path: Path, text: str) -> bool:
    """True when this call created `path` (O_CREAT|O_EXCL: exactly one of several racing processes does)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as e:
        raise InputError(f"{path}: cannot create the lock file ({e.strerror or e})") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return True


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _take_lock(path: Path) -> None:
    lock = path / LOCK_NAME
    holder: dict = {}
    for attempt in range(40):
        if attempt:
            time.sleep(0.05)
        if _create_exclusive(lock, _lock_text()):
            return
        holder = _read_json(lock)
        if not holder:
            continue  # released, or just created and not yet written: look again
        pid, host = holder.get("pid"), holder.get("host")
        if holder.get("pid") == os.getpid() and host == socket.gethostname():
            raise InputError(f"{path}: already claimed by this process")
        if host != socket.gethostname() or _alive(pid):
            since = f" since {holder['started']}" if holder.get("started") else ""
            raise InputError(f"{path}: in use by another lastvit-eval (pid {pid} on {host}{since}); wait for it, "
                             f"or remove {lock} if that process is gone")
        _remove_stale(path, lock, holder)
    raise InputError(f"{path}: could not take the lock {lock} (unreadable or changing: {holder or 'empty'}); "
                     f"remove it if no lastvit-eval is writing here")


def _remove_stale(path: Path, lock: Path, holder: dict) -> None:
    """Remove a dead process's lock, under a second O_EXCL file so two processes taking over the same stale
    lock cannot delete the fresh lock the faster one just made."""
    guard = path / _TAKEOVER
    if not _create_exclusive(guard, _lock_text()):
        other = _read_json(guard)
        if other and other.get("host") == socket.gethostname() and not _alive(other.get("pid")):
            with contextlib.suppress(FileNotFoundError):
                guard.unlink()  # the guard's own holder died in the few lines below
        return  # someone else is taking over; retry the lock
    try:
        if _read_json(lock) == holder:  # still the stale one we judged
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
    finally:
        with contextlib.suppress(FileNotFoundError):
            guard.unlink()


