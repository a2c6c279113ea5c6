"""Image identity by content: sha256 of the file's bytes, memoized by (path, size, mtime, inode).

The feature store keys every row by this hash, so a renamed, moved or copied dataset still hits. The
memo (one SQLite file beside the store) means a rerun only stats the files; a file whose size, mtime
or inode changed is hashed again.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ..models.checkpoint import sha256_file

_SCHEMA = "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ino INTEGER, sha TEXT)"


def content_hashes(paths: list[Path], memo: Path | None = None) -> list[str | None]:
    """sha256 per path (None where the file cannot be read: the decoder reports it as a bad image)."""
    stats: list[os.stat_result | None] = []
    for p in paths:
        try:
            stats.append(os.stat(p))
        except OSError:
            stats.append(None)
    known: dict[str, tuple[int, int, int, str]] = {}
    db = None
    if memo is not None:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(memo), timeout=60)
            db.execute(_SCHEMA)
            absolute = [os.path.abspath(p) for p in paths]
            for start in range(0, len(absolute), 500):
                part = absolute[start:start + 500]
                rows = db.execute(f"SELECT path, size, mtime_ns, ino, sha FROM files WHERE path IN "
                                  f"({','.join('?' * len(part))})", part).fetchall()
                known.update({r[0]: (r[1], r[2], r[3], r[4]) for r in rows})
        except sqlite3.Error:
            db = None  # a broken memo only costs re-hashing
    out: list[str | None] = []
    fresh = []
    for p, st in zip(paths, stats, strict=True):
        if st is None:
            out.append(None)
            continue
        key = os.path.abspath(p)
        hit = known.get(key)
        if hit is not None and hit[:3] == (st.st_size, st.st_mtime_ns, st.st_ino):
            out.append(hit[3])
            continue
        try:
            sha = sha256_file(Path(p))
        except OSError:
            out.append(None)
            continue
        out.append(sha)
        fresh.append((key, st.st_size, st.st_mtime_ns, st.st_ino, sha))
    if db is not None:
        try:
            if fresh:
                with db:
                    db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)", fresh)
            db.close()
        except sqlite3.Error:
            pass
    return out


def record_hashes(memo: Path, entries: list[tuple[str, os.stat_result, str]]) -> None:
    """Add hashes computed elsewhere (absolute path, the stat taken before hashing, sha256) to the memo."""
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(memo), timeout=60)
        db.execute(_SCHEMA)
        with db:
            db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                           [(p, st.st_size, st.st_mtime_ns, st.st_ino, sha) for p, st, sha in entries])
        db.close()
    except sqlite3.Error:
        pass  # a broken memo only costs re-hashing
