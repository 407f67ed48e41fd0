"""Plumbing shared by the embedded SQLite backends (key-value, document, wide-column
and relational): opening the file, the transactions, a store whose one
connection lives on a :class:`~multistore.stores._worker.Worker` thread
(:class:`SQLiteStore`) and its sync twin, whose connection is used on the calling
thread under a lock (:class:`SyncSQLiteStore`).

Every backend opens its file the same way: URL options ``timeout`` (the busy
timeout; 5 s unless the backend says otherwise), ``journal_mode`` (default
``wal``, not applied to ``:memory:``), ``synchronous`` (default ``normal``) and
``create`` (default true; false refuses to create a missing file). The connection
is in autocommit mode (``isolation_level=None``), so each backend begins its own
transactions: :func:`write` and :func:`transaction` take the write lock first
(``BEGIN IMMEDIATE``), so they cannot interleave with another writer, in this
process or another.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Concatenate, Final, ParamSpec, TypeVar

from multistore.errors import (
    InvalidURLError,
    MultistoreError,
    NotFoundError,
    Outcome,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    UsageError,
)
from multistore.stores._base import Store
from multistore.stores._plans import drive, drive_async
from multistore.stores._sync_base import SyncStore
from multistore.stores._worker import Worker
from multistore.urls import StoreURL

__all__ = [
    "Plan",
    "SQLiteStore",
    "SyncSQLiteStore",
    "connect",
    "read",
    "sqlite_error",
    "start",
    "transaction",
    "write",
]

P = ParamSpec("P")
T = TypeVar("T")

Plan = Generator[Callable[[sqlite3.Connection], Any], Any, T]
"""An operation of several steps: it yields functions of the connection, receives
what each returned (or has its error thrown in) and returns the answer; the async
store runs each step on its worker thread, the sync store on the calling thread
(``_drive``)."""

_JOURNAL_MODES: Final = frozenset({"wal", "delete", "truncate", "persist", "memory", "off"})
_SYNCHRONOUS: Final = frozenset({"off", "normal", "full", "extra"})


def connect(
    url: StoreURL,
    what: str,
    prepare: Callable[[sqlite3.Connection], None],
    *,
    timeout: float | None = None,
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """Open the URL's SQLite file with the pragmas its options ask for, then call
    ``prepare(connection)`` (schema, functions …). ``what`` names the store in the
    error (``"a key-value store"``); ``timeout`` overrides the URL's (default 5 s).

    Failures to open or prepare the file are :class:`StoreUnavailableError`; a
    missing file with ``create=false`` is :class:`NotFoundError`."""
    path = url.path
    seconds = url.float_option("timeout", 5.0) if timeout is None else timeout
    journal = url.str_option("journal_mode", "wal").lower()
    sync = url.str_option("synchronous", "normal").lower()
    if journal not in _JOURNAL_MODES:
        raise InvalidURLError(f"journal_mode={journal!r} is not one of {sorted(_JOURNAL_MODES)}")
    if sync not in _SYNCHRONOUS:
        raise InvalidURLError(f"synchronous={sync!r} is not one of {sorted(_SYNCHRONOUS)}")
    try:
        if path != ":memory:":
            if url.option("create", True):
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            elif not Path(path).exists():
                raise NotFoundError(f"SQLite file {path!r} does not exist (create=false)")
        conn = sqlite3.connect(
            path, isolation_level=None, timeout=seconds, check_same_thread=check_same_thread
        )
    except (sqlite3.Error, OSError) as exc:
        raise StoreUnavailableError(
            f"cannot open SQLite file {path!r}: {exc}", outcome=Outcome.DEFINITE
        ) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
        if path != ":memory:":
            _set_journal_mode(conn, journal, seconds)
        conn.execute(f"PRAGMA synchronous = {sync}")
        prepare(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreUnavailableError(
            f"cannot prepare SQLite file {path!r} as {what}: {exc}", outcome=Outcome.DEFINITE
        ) from exc
    return conn


def _set_journal_mode(conn: sqlite3.Connection, mode: str, timeout: float) -> None:
    """``PRAGMA journal_mode``, retried while another connection holds the file.

    Changing the journal mode needs an exclusive lock, and SQLite reports a conflict
    at once instead of calling the busy handler: two processes that open a new file
    together would otherwise see "database is locked". The mode is kept in the file,
    so once one of them has set it the other finds it set."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            (current,) = conn.execute("PRAGMA journal_mode").fetchone()
            if str(current).lower() != mode:
                conn.execute(f"PRAGMA journal_mode = {mode}")
            return
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


async def start(
    name: str, opener: Callable[P, sqlite3.Connection], /, *args: P.args, **kwargs: P.kwargs
) -> tuple[Worker, sqlite3.Connection]:
    """A new worker thread and the connection ``opener(*args, **kwargs)`` opens on it;
    the thread is stopped again if opening fails."""
    worker = Worker(name)
    try:
        return worker, await worker.run(opener, *args, **kwargs)
    except BaseException:
        worker.close()
        raise


class _Immediate:
    """``BEGIN IMMEDIATE`` on entry; ``COMMIT`` on a normal exit, else ``ROLLBACK``."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._conn.execute("ROLLBACK" if kind is not None else "COMMIT")


def transaction(conn: sqlite3.Connection) -> _Immediate:
    """``with transaction(conn):`` runs the block in one write transaction (the write
    lock taken first), rolled back if the block raises."""
    return _Immediate(conn)


def write(
    conn: sqlite3.Connection,
    fn: Callable[Concatenate[sqlite3.Connection, float, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run ``fn(conn, now, …)`` in one write transaction (the write lock taken first);
    ``now`` is the wall-clock time in epoch seconds."""
    with _Immediate(conn):
        return fn(conn, time.time(), *args, **kwargs)


def read(
    conn: sqlite3.Connection,
    fn: Callable[Concatenate[sqlite3.Connection, float, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run ``fn(conn, now, …)`` in one read transaction (a consistent snapshot)."""
    conn.execute("BEGIN")
    try:
        return fn(conn, time.time(), *args, **kwargs)
    finally:
        conn.execute("COMMIT")


def sqlite_error(url: StoreURL, exc: sqlite3.Error) -> MultistoreError:
    """The error to raise for a driver error: a lock held past the busy timeout is a
    :class:`StoreTimeoutError`, anything else a :class:`StoreError`."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return StoreTimeoutError(f"SQLite file {url} stayed locked past the busy timeout: {text}")
    return StoreError(f"SQLite error on {url}: {text}")


class SQLiteStore(Store):
    """A store with one ``sqlite3`` connection owned by its worker thread.

    A backend derives from this and from its model's interface, sets ``_noun``
    (``"key-value store"``) and runs its work with :meth:`_call`, which calls
    ``fn(connection, …)`` on the worker thread and maps driver errors through
    :meth:`_error`."""

    _noun: ClassVar[str]

    def __init__(self, url: StoreURL, worker: Worker, conn: sqlite3.Connection) -> None:
        self.url = url
        self._worker = worker
        self._conn = conn
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._worker.run(self._conn.close)
        finally:
            self._worker.close()

    @property
    def native(self) -> sqlite3.Connection:
        """The ``sqlite3.Connection``. It belongs to the store's worker thread: use it
        only through ``store.run(fn)``, which calls ``fn(connection)`` there."""
        return self._conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Call ``fn(connection)`` on the worker thread that owns the connection."""
        return await self._call_on(None, fn)

    async def _call(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """``fn(connection, *args, **kw)`` on the worker thread."""
        return await self._call_on(None, fn, *args, **kw)

    async def _call_on(
        self,
        subject: str | None,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kw: P.kwargs,
    ) -> T:
        """:meth:`_call` for work on ``subject`` (a collection …), which
        :meth:`_error` may name."""
        if self._closed:
            raise UsageError(f"the {self._noun} {self.url} is closed")
        try:
            return await self._worker.run(fn, self._conn, *args, **kw)
        except MultistoreError:
            raise
        except sqlite3.Error as exc:
            raise self._error(exc, subject) from exc

    def _error(self, exc: sqlite3.Error, subject: str | None) -> MultistoreError:
        """The error to raise for a driver error in work on ``subject``."""
        return sqlite_error(self.url, exc)

    async def _drive(self, plan: Plan[T]) -> T:
        """Run ``plan``, each step on the worker thread."""
        return await drive_async(plan, self._call)


class SyncSQLiteStore(SyncStore):
    """The sync twin of :class:`SQLiteStore`: one ``sqlite3`` connection, used on the
    calling thread. A re-entrant lock makes each call atomic with respect to the
    store's other calls, so threads may share the store (one call runs at a time, as
    on the async store's worker thread); the connection is opened with
    ``check_same_thread=False`` for that.

    A backend derives from this and from its model's sync interface, sets ``_noun``
    and runs each operation's step with :meth:`_call`."""

    _noun: ClassVar[str]

    def __init__(self, url: StoreURL, conn: sqlite3.Connection) -> None:
        self.url = url
        self._conn = conn
        self._lock = threading.RLock()
        self._closed = False

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    @property
    def native(self) -> sqlite3.Connection:
        """The ``sqlite3.Connection``. Other threads may use the store at the same
        time: use the connection only through ``store.run(fn)``, which holds the
        store's lock while it calls ``fn(connection)``."""
        return self._conn

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Call ``fn(connection)`` holding the store's lock."""
        return self._call_on(None, fn)

    def _call(self, step: Callable[[sqlite3.Connection], T]) -> T:
        """``step(connection)`` under the lock, driver errors mapped."""
        with self._lock:
            if self._closed:
                raise UsageError(f"the {self._noun} {self.url} is closed")
            try:
                return step(self._conn)
            except MultistoreError:
                raise
            except sqlite3.Error as exc:
                raise self._error(exc, None) from exc

    def _call_on(
        self,
        subject: str | None,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kw: P.kwargs,
    ) -> T:
        """``fn(connection, *args, **kw)`` under the lock, for work on ``subject``
        (a collection …), which :meth:`_error` may name."""
        with self._lock:
            if self._closed:
                raise UsageError(f"the {self._noun} {self.url} is closed")
            try:
                return fn(self._conn, *args, **kw)
            except MultistoreError:
                raise
            except sqlite3.Error as exc:
                raise self._error(exc, subject) from exc

    def _error(self, exc: sqlite3.Error, subject: str | None) -> MultistoreError:
        """The error to raise for a driver error in work on ``subject``."""
        return sqlite_error(self.url, exc)

    def _drive(self, plan: Plan[T]) -> T:
        """Run ``plan``, each step on this thread under the lock."""
        return drive(plan, self._call)
