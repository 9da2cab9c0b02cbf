"""One writer at a time per store directory, readers never see a half-switched store.

``store_lock(root, exclusive=True)`` takes an ``fcntl.flock`` on ``root/.lock``: exclusive
for read-modify-write (``spanqa index``, ``DocumentStore.save``), shared for loading. Two
processes that both update a store therefore run one after the other, and the second one
reads what the first one wrote. Within a process a re-entrant lock per directory serialises
threads and lets a holder take the lock again (``save`` inside ``spanqa index``'s lock).
A reader that may not create the lock file (a read-only store) reads without it.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"

_GUARD = threading.Lock()
_HELD: dict[str, list] = {}  # path -> [RLock, fd or None, depth, exclusive]


@contextmanager
def store_lock(root: str | Path, exclusive: bool = True):
    import fcntl

    key = str(Path(root).resolve())
    with _GUARD:
        entry = _HELD.setdefault(key, [threading.RLock(), None, 0, False])
    rlock = entry[0]
    rlock.acquire()
    try:
        if entry[2] == 0:
            entry[1] = _open_lock_file(Path(key), exclusive)
            entry[3] = False
        if entry[1] is not None and (exclusive and not entry[3] or entry[2] == 0):
            fcntl.flock(entry[1], fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            entry[3] = entry[3] or exclusive
        entry[2] += 1
        try:
            yield
        finally:
            entry[2] -= 1
            if entry[2] == 0 and entry[1] is not None:
                os.close(entry[1])  # releases the flock
                entry[1] = None
    finally:
        rlock.release()


def _open_lock_file(root: Path, exclusive: bool) -> int | None:
    if exclusive:
        root.mkdir(parents=True, exist_ok=True)
        return os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        return os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        try:
            return os.open(root / LOCK_FILE, os.O_RDONLY)
        except OSError:
            return None
