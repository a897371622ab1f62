"""One process at a time per run id (and per trained-weights folder): fcntl locks under ``outputs/locks``.

Two invocations of the same configuration share the checkpoint folder, the trained-weights folder
and the run record; run at once they delete each other's checkpoints. A run therefore holds an
exclusive ``flock`` on ``<outputs>/locks/<run_id>.lock`` from before it reads anything until its
record is written. A second invocation waits for the first (saying once who holds the lock) and,
when the first wrote the record meanwhile, takes that record instead of training again.

The kernel releases a ``flock`` when its process ends, however it ends (crash, kill -9), so a stale
lock file never blocks anyone: lock files are left in place (deleting them would let a third process
lock a new file while a second still waits on the old one).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Longest holder description read back from a lock file (it is only shown in a message).
_HOLDER_BYTES = 512


def lock_path(outputs: Path, name: str) -> Path:
    """``<outputs>/locks/<name>.lock`` for a run id or ``train-<key>``.

    A name that is not a plain file name (a separator, a leading dot, empty, over 200 characters:
    e.g. a run id made from ``data.name=a/b``) is replaced by ``id-<sha256 prefix>``, so the lock
    file always lies inside ``<outputs>/locks`` and different names never share a lock.
    """
    plain = name and len(name) <= 200 and not name.startswith(".") and not any(c in name for c in "/\\\0")
    stem = name if plain else "id-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return Path(outputs) / "locks" / f"{stem}.lock"


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it (printable characters only)."""
    try:
        raw = os.pread(fd, _HOLDER_BYTES, 0)
    except OSError:
        return "unknown process"
    text = raw.decode("utf-8", "replace").strip()
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text or "unknown process"


@contextmanager
def exclusive(path: Path, announce: Callable[[str], None] | None = None, what: str = "") -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` for the block; wait while another process holds it.

    Args:
        path: the lock file (created with its folder when missing).
        announce: called once with a one-line message when the lock is busy and we wait.
        what: what the lock protects, for that message.

    Yields:
        True when we had to wait for another process (it may have finished the work meanwhile).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited = True
            if announce is not None:
                announce(f"{what or path.stem}: waiting for {_holder(fd)} (lock {path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
        yield waited
    finally:
        os.close(fd)  # releases the lock
