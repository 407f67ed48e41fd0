"""SQLite relational backend: one connection owned by one worker thread (async), or
used on the calling thread (sync, :class:`SyncSQLiteRelationalStore`).

The store has a single ``sqlite3`` connection in autocommit mode
(``isolation_level=None``), WAL journal, ``busy_timeout`` and ``foreign_keys=ON``.
Every call runs on the store's :class:`~multistore.stores._worker.Worker`.
``store.connection()`` is an exclusive lease on that connection, so transactions
(``BEGIN IMMEDIATE``) are serialised within the process, and with other processes
by SQLite's own write lock. A statement that runs longer than ``?timeout=`` seconds
is interrupted by a progress handler (:class:`~multistore.errors.StoreTimeoutError`).

The sync store runs the same statement functions on the calling thread; its
``connection()`` is the same exclusive lease, taken with a thread lock, so threads
that share the store run their transactions one after another.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any, Final, Self, TypeVar

from multistore.errors import (
    ConflictError,
    DuplicateKeyError,
    InvalidQueryError,
    InvalidValueError,
    MultistoreError,
    NotFoundError,
    Outcome,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    UsageError,
)
from multistore.stores._sqlite_common import connect, start
from multistore.stores._worker import Worker
from multistore.stores.relational._api import Connection, RelationalStore
from multistore.stores.relational._params import bind, compile_sql
from multistore.stores.relational._protocol import Params
from multistore.stores.relational._rows import Columns, Row
from multistore.stores.relational._sync_api import SyncConnection, SyncRelationalStore
from multistore.urls import StoreURL

__all__ = ["SQLiteRelationalStore", "SyncSQLiteRelationalStore"]

T = TypeVar("T")

_PROGRESS_STEPS: Final = 10_000


class _Clock:
    """The deadline of the statement running now, read by the progress handler."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = float("inf")

    def start(self) -> None:
        self.deadline = time.monotonic() + self.timeout

    def expired(self) -> int:
        return 1 if time.monotonic() > self.deadline else 0


class SQLiteConnection(Connection):
    dialect = "sqlite"

    def __init__(self, store: SQLiteRelationalStore) -> None:
        super().__init__()
        self._store = store
        self._interrupted = False
        """A call was cancelled while queued or running: it may still run after."""

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await self._store._worker.run(
                _guarded, fn, self._store._db, self._store._clock, *args
            )
        except asyncio.CancelledError:
            self._interrupted = True
            raise

    async def _execute(self, sql: str, params: Any) -> int:
        return await self._call(_execute, sql, params)

    async def _executemany(self, sql: str, seq_of_params: list[Any]) -> int:
        return await self._call(_executemany, sql, seq_of_params)

    async def _fetch(self, sql: str, params: Any, *, one: bool) -> list[Row]:
        return await self._call(_fetch, sql, params, one)

    async def _script(self, sql: str) -> None:
        await self._call(_script, sql)

    async def _begin(self) -> None:
        await self._execute("BEGIN IMMEDIATE", None)


class SQLiteRelationalStore(RelationalStore):
    """Relational store on a SQLite file (``sqlite:///path.db``) or ``sqlite:///:memory:``.

    ``native`` is the ``sqlite3.Connection``. It was opened with
    ``check_same_thread=False``; call it through ``await store.run(fn)``,
    which runs ``fn(connection)`` on the worker thread while holding the lease.
    """

    def __init__(
        self, url: StoreURL, worker: Worker, db: sqlite3.Connection, clock: _Clock
    ) -> None:
        self.url = url
        self._worker = worker
        self._db = db
        self._clock = clock
        self._lease = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None
        self._closed = False

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        clock = _Clock(url.float_option("timeout", 30.0))
        worker, db = await start("sqlite-relational", _connect, url, clock)
        return cls(url, worker, db, clock)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._lease:
            with contextlib.suppress(sqlite3.Error):
                await self._worker.run(self._db.close)
        self._worker.close()

    @property
    def native(self) -> sqlite3.Connection:
        return self._db

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed", outcome=Outcome.DEFINITE)
        task = asyncio.current_task()
        if task is not None and self._holder is task:
            raise UsageError(
                "this task already holds the SQLite store's only connection (inside "
                "store.connection() or store.transaction()); run the statement on that "
                "connection or transaction instead of on the store"
            )
        async with self._lease:
            self._holder = task
            conn = SQLiteConnection(self)
            try:
                yield conn
            finally:
                conn._released = True
                self._holder = None
                if conn.in_transaction or conn._interrupted or self._db.in_transaction:
                    # Never hand the connection on inside a transaction (a block cancelled
                    # mid-exit, a BEGIN sent as a plain statement): roll back what is
                    # open, on the worker, after any call of this lease still queued.
                    with contextlib.suppress(MultistoreError):
                        await conn._call(_rollback_open)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(sqlite3_connection)`` on the worker thread, holding the lease."""
        async with self.connection():
            return await self._worker.run(fn, self._db)


class SyncSQLiteConnection(SyncConnection):
    dialect = "sqlite"

    def __init__(self, store: SyncSQLiteRelationalStore) -> None:
        super().__init__()
        self._store = store

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return _guarded(fn, self._store._db, self._store._clock, *args)

    def _execute(self, sql: str, params: Any) -> int:
        return self._call(_execute, sql, params)

    def _executemany(self, sql: str, seq_of_params: list[Any]) -> int:
        return self._call(_executemany, sql, seq_of_params)

    def _fetch(self, sql: str, params: Any, *, one: bool) -> list[Row]:
        return self._call(_fetch, sql, params, one)

    def _script(self, sql: str) -> None:
        self._call(_script, sql)

    def _begin(self) -> None:
        self._execute("BEGIN IMMEDIATE", None)


class SyncSQLiteRelationalStore(SyncRelationalStore):
    """Relational store on a SQLite file, for sync code: statements run on the calling
    thread. ``connection()`` (and so ``transaction()`` and each statement on the
    store) leases the one connection exclusively; other threads wait for it."""

    def __init__(self, url: StoreURL, db: sqlite3.Connection, clock: _Clock) -> None:
        self.url = url
        self._db = db
        self._clock = clock
        self._lease = threading.Lock()
        self._holder: int | None = None
        self._closed = False

    @classmethod
    def open(cls, url: StoreURL) -> Self:
        clock = _Clock(url.float_option("timeout", 30.0))
        return cls(url, _connect(url, clock), clock)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lease, contextlib.suppress(sqlite3.Error):
            self._db.close()

    @property
    def native(self) -> sqlite3.Connection:
        return self._db

    @contextlib.contextmanager
    def connection(self) -> Iterator[SyncConnection]:
        self._check_free()
        with self._lease:
            if self._closed:
                raise StoreUnavailableError(f"{self!r} is closed", outcome=Outcome.DEFINITE)
            self._holder = threading.get_ident()
            conn = SyncSQLiteConnection(self)
            try:
                yield conn
            finally:
                conn._core.released = True
                self._holder = None
                if conn.in_transaction or self._db.in_transaction:
                    # Never hand the connection on inside a transaction (a BEGIN sent
                    # as a plain statement, an exit interrupted): roll back what is open.
                    with contextlib.suppress(MultistoreError):
                        conn._call(_rollback_open)

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(sqlite3_connection)`` on this thread, holding the lease."""
        with self.connection():
            return fn(self._db)

    # -- one-statement calls: the lease and the statement, no connection object --

    def execute(self, sql: str, params: Params | None = None) -> int:
        return self._once(_execute, sql, params)

    def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        return self._once(_fetch, sql, params, False)

    def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        rows = self._once(_fetch, sql, params, True)
        return rows[0] if rows else None

    def fetch_val(self, sql: str, params: Params | None = None) -> Any:
        rows = self._once(_fetch, sql, params, True)
        return rows[0][0] if rows else None

    def _check_free(self) -> None:
        """Refuse a closed store, and a lease this thread holds already (it would wait
        for itself)."""
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed", outcome=Outcome.DEFINITE)
        if self._holder == threading.get_ident():
            raise UsageError(
                "this thread already holds the SQLite store's only connection (inside "
                "store.connection() or store.transaction()); run the statement on that "
                "connection or transaction instead of on the store"
            )

    def _once(self, fn: Callable[..., T], sql: str, params: Params | None, *extra: Any) -> T:
        """One statement, as ``connection()`` then the statement on it would run it."""
        compiled = compile_sql(sql, "sqlite")
        args = bind(compiled, params)
        self._check_free()
        with self._lease:
            if self._closed:
                raise StoreUnavailableError(f"{self!r} is closed", outcome=Outcome.DEFINITE)
            try:
                return _guarded(fn, self._db, self._clock, compiled.sql, args, *extra)
            finally:
                if self._db.in_transaction:  # a BEGIN sent as a plain statement
                    with contextlib.suppress(MultistoreError):
                        _guarded(_rollback_open, self._db, self._clock)


def _connect(url: StoreURL, clock: _Clock) -> sqlite3.Connection:
    return connect(
        url,
        "a relational store",
        lambda db: _prepare(db, clock),
        timeout=clock.timeout,
        check_same_thread=False,
    )


def _prepare(db: sqlite3.Connection, clock: _Clock) -> None:
    """Enforce foreign keys; interrupt a statement that runs past the clock's timeout."""
    db.execute("PRAGMA foreign_keys = ON")
    db.set_progress_handler(clock.expired, _PROGRESS_STEPS)


# -- worker-thread functions --


def _guarded(fn: Callable[..., T], db: sqlite3.Connection, clock: _Clock, *args: Any) -> T:
    clock.start()
    try:
        return fn(db, *args)
    except sqlite3.Error as exc:
        raise _map_error(exc) from exc
    except OverflowError as exc:
        raise InvalidValueError(f"sqlite: {exc}") from exc
    except UnicodeEncodeError as exc:
        raise InvalidValueError(f"sqlite: a string that is not valid Unicode: {exc}") from exc
    finally:
        clock.deadline = float("inf")


def _adapt(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _args(params: Any) -> Any:
    return () if params is None else [_adapt(v) for v in params]


def _execute(db: sqlite3.Connection, sql: str, params: Any) -> int:
    cur = db.execute(sql, _args(params))
    try:
        if cur.description is not None:
            cur.fetchall()
        return max(cur.rowcount, 0)
    finally:
        cur.close()


def _executemany(db: sqlite3.Connection, sql: str, seq_of_params: list[Any]) -> int:
    cur = db.executemany(sql, [_args(p) for p in seq_of_params])
    try:
        return max(cur.rowcount, 0)
    finally:
        cur.close()


def _fetch(db: sqlite3.Connection, sql: str, params: Any, one: bool) -> list[Row]:
    cur = db.execute(sql, _args(params))
    try:
        if cur.description is None:
            return []
        columns = Columns([d[0] for d in cur.description])
        if one:
            first = cur.fetchone()
            return [] if first is None else [columns.row(first)]
        return [columns.row(values) for values in cur.fetchall()]
    finally:
        cur.close()


def _rollback_open(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        db.execute("ROLLBACK")


def _script(db: sqlite3.Connection, sql: str) -> None:
    """Run ``;``-separated statements one at a time inside the caller's transaction
    (``executescript`` would COMMIT first). ``complete_statement`` knows about string
    literals, comments and trigger bodies."""
    alone = not db.in_transaction
    ran = 0

    def run(statement: str) -> None:
        nonlocal ran
        try:
            db.execute(statement).close()
        except sqlite3.Error as exc:
            error = _map_error(exc)
            if alone and ran:  # the statements before it committed on their own
                error.outcome = Outcome.INDETERMINATE
            raise error from exc
        ran += 1

    buffer = ""
    for piece in sql.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\r\n;"):
                run(buffer)
            buffer = ""
    rest = buffer[:-1]
    if rest.strip(" \t\r\n;"):
        run(rest)


_NAMED_CODES: Final = {
    "SQLITE_CONSTRAINT_UNIQUE": DuplicateKeyError,
    "SQLITE_CONSTRAINT_PRIMARYKEY": DuplicateKeyError,
    "SQLITE_CONSTRAINT_ROWID": DuplicateKeyError,
    "SQLITE_INTERRUPT": StoreTimeoutError,
    "SQLITE_BUSY": StoreTimeoutError,
    "SQLITE_BUSY_SNAPSHOT": StoreTimeoutError,
    "SQLITE_LOCKED": StoreTimeoutError,
    "SQLITE_CANTOPEN": StoreUnavailableError,
    "SQLITE_IOERR": StoreError,
    "SQLITE_FULL": StoreError,
    "SQLITE_READONLY": StoreError,
    "SQLITE_CORRUPT": StoreError,
    "SQLITE_TOOBIG": InvalidValueError,
    "SQLITE_MISMATCH": InvalidValueError,
    "SQLITE_RANGE": InvalidQueryError,
}


def _map_error(exc: sqlite3.Error) -> MultistoreError:
    message = f"sqlite: {exc}"
    name: str = getattr(exc, "sqlite_errorname", None) or ""
    base = "_".join(name.split("_")[:2])
    kind = _NAMED_CODES.get(name) or _NAMED_CODES.get(base)
    if kind is not None:
        if base == "SQLITE_INTERRUPT":
            message += " (the statement ran past the timeout)"
        return kind(message)
    text = str(exc).lower()
    if isinstance(exc, sqlite3.IntegrityError):
        return ConflictError(message)
    if "no such table" in text:
        return NotFoundError(message)
    if isinstance(exc, sqlite3.InterfaceError | sqlite3.DataError) or "binding parameter" in text:
        return InvalidValueError(message)
    if "closed" in text:
        return StoreUnavailableError(message, outcome=Outcome.DEFINITE)
    if isinstance(exc, sqlite3.ProgrammingError | sqlite3.OperationalError):
        return InvalidQueryError(message)
    return StoreError(message)
