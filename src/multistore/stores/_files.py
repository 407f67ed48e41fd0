"""Metadata files of embedded stores: a lock across processes and atomic replacement.

A store that keeps metadata in a file of its own (tantivy's ``indexes.json``) changes
it with a read-modify-write. Two processes doing that at once lose each other's
change unless the whole read-modify-write holds a lock, and a reader (or a crash)
halfway through a write sees a torn file unless the new content replaces the old in
one step. :func:`locked` is that lock (``flock`` on a lock file beside the metadata;
it serialises store objects in one process too, since each opens the file anew), and
:func:`replace_atomically` writes a temporary file, flushes it to disk, renames it
over the old one and flushes the directory, so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from multistore.errors import Outcome, StoreError, StoreTimeoutError

__all__ = ["locked", "replace_atomically"]

#: How often a waiter tries the lock again (seconds).
_POLL: Final = 0.005


@contextlib.contextmanager
def locked(path: Path, *, timeout: float, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block.

    Waits at most ``timeout`` seconds, then raises a definite
    :class:`~multistore.errors.StoreTimeoutError` (nothing was changed)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(
            f"cannot open the lock file {path} for {what}: {exc}", outcome=Outcome.DEFINITE
        ) from exc
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreTimeoutError(
                        f"{what}: another store object or process held the lock {path} "
                        f"for more than {timeout:g} s; nothing was changed",
                        outcome=Outcome.DEFINITE,
                    ) from None
                time.sleep(_POLL)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def replace_atomically(path: Path, data: bytes) -> None:
    """Make ``data`` the content of ``path`` in one step that survives a crash: a
    reader sees the old content or the new, never a mixture. Raises ``OSError``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
