"""MariaDB relational backend for sync code: PyMySQL connections used on the calling
thread, from a small pool that threads share (each lease is a connection of its own).

Same URL options, session settings, parameter checks and error mapping as the async
backend (:mod:`._mariadb`, whose statement functions this module calls directly
instead of on a worker thread); the protocol is the shared
:class:`~multistore.stores.relational._protocol.ConnectionCore`. A connection idle
for more than a second is pinged (and reconnected if it was dropped) when it is
leased.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

from multistore.errors import MultistoreError, Outcome, StoreTimeoutError, StoreUnavailableError
from multistore.stores.relational._mariadb import (
    GET_LOCK,
    RELEASE_LOCK,
    _connect,
    _execute,
    _executemany,
    _fetch,
    _guarded,
    _ping,
    migration_busy,
    migration_lock,
    settings_of,
)
from multistore.stores.relational._params import split_statements
from multistore.stores.relational._rows import Row
from multistore.stores.relational._sync_api import SyncConnection, SyncRelationalStore
from multistore.urls import StoreURL

if TYPE_CHECKING:
    from multistore.stores.relational._mariadb import MyConn

__all__ = ["SyncMariaDBRelationalStore"]

T = TypeVar("T")

_CHECK_AFTER_IDLE: Final = 1.0


class _Session:
    """One pooled connection, when it was handed back, and whether to drop it."""

    def __init__(self, conn: MyConn) -> None:
        self.conn = conn
        self.idle_since = time.monotonic()
        self.broken = False


class SyncMariaDBConnection(SyncConnection):
    dialect = "mariadb"

    def __init__(self, session: _Session) -> None:
        super().__init__()
        self._session = session

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return _guarded(fn, self._session.conn, *args)
        except (StoreUnavailableError, StoreTimeoutError):
            self._session.broken = True  # cut off mid-statement: never reuse this session
            raise

    def _execute(self, sql: str, params: Any) -> int:
        return self._call(_execute, sql, params)

    def _executemany(self, sql: str, seq_of_params: list[Any]) -> int:
        return self._call(_executemany, sql, seq_of_params)

    def _fetch(self, sql: str, params: Any, *, one: bool) -> list[Row]:
        return self._call(_fetch, sql, params, one)

    def _script(self, sql: str) -> None:
        for i, statement in enumerate(split_statements(sql, "mariadb")):
            try:
                self._call(_execute, statement, None)
            except MultistoreError as exc:
                if i and not self.in_transaction:  # the statements before it committed
                    exc.outcome = Outcome.INDETERMINATE
                raise

    def _begin(self) -> None:
        self._execute("START TRANSACTION", None)


class SyncMariaDBRelationalStore(SyncRelationalStore):
    """Relational store on MariaDB or MySQL, for sync code. ``native`` opens a new
    ``pymysql`` connection with the store's settings (the caller closes it)."""

    def __init__(self, url: StoreURL, settings: dict[str, Any], first: _Session) -> None:
        self.url = url
        self._settings = settings
        self._connect_timeout = url.float_option("connect_timeout", 5.0)
        self._timeout = url.float_option("timeout", 30.0)
        self._size = url.int_option("pool_max", 5)
        self._idle: list[_Session] = [first]
        self._free = threading.BoundedSemaphore(self._size)
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, url: StoreURL) -> Self:
        settings = settings_of(url)
        return cls(url, settings, _Session(_connect(settings)))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
        for session in idle:
            with contextlib.suppress(Exception):
                session.conn.close()

    @property
    def native(self) -> Callable[[], MyConn]:
        return lambda: _connect(self._settings)

    @contextlib.contextmanager
    def connection(self) -> Iterator[SyncConnection]:
        session = self._acquire()
        conn = SyncMariaDBConnection(session)
        try:
            yield conn
        finally:
            conn._core.released = True
            if conn.in_transaction:  # the block's exit was interrupted
                session.broken = True
            self._release(session)

    @contextlib.contextmanager
    def _migration_connection(self) -> Iterator[SyncConnection]:
        # GET_LOCK is held by the session, across the migrations' transactions.
        name = migration_lock(self.url.database)
        with self.connection() as conn:
            got = conn.fetch_val(GET_LOCK, {"name": name, "wait": self._timeout})
            if got != 1:
                raise migration_busy(self.url, name, self._timeout)
            try:
                yield conn
            finally:
                with contextlib.suppress(MultistoreError):
                    conn.fetch_val(RELEASE_LOCK, {"name": name})

    def _acquire(self) -> _Session:
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed", outcome=Outcome.DEFINITE)
        if not self._free.acquire(timeout=self._connect_timeout):
            raise StoreTimeoutError(
                f"no free MariaDB connection within {self._connect_timeout:g} s "
                f"(pool_max={self._size}); raise pool_max or connect_timeout",
                outcome=Outcome.DEFINITE,
            )
        try:
            with self._lock:
                session = self._idle.pop() if self._idle else None
            if session is None:
                return _Session(_connect(self._settings))
            if time.monotonic() - session.idle_since > _CHECK_AFTER_IDLE:
                _ping(session.conn)
            return session
        except BaseException:
            self._free.release()
            raise

    def _release(self, session: _Session) -> None:
        try:
            if session.broken or not session.conn.open:
                with contextlib.suppress(Exception):
                    session.conn.close()
                return
            session.idle_since = time.monotonic()
            with self._lock:
                if self._closed:
                    session.conn.close()
                else:
                    self._idle.append(session)
        finally:
            self._free.release()
