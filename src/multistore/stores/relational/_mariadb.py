"""MariaDB relational backend: PyMySQL connections in a small pool of worker threads.

Each pooled connection has its own :class:`~multistore.stores._worker.Worker`
thread, so a leased connection runs its blocking calls off the event loop while other
leases run theirs. Connections are ``utf8mb4``, in autocommit mode, with
``CLIENT.FOUND_ROWS`` (an UPDATE counts matched rows, as on PostgreSQL and SQLite),
and the session adds ``ANSI_QUOTES`` and ``PIPES_AS_CONCAT`` to ``sql_mode`` so that
``"quoted identifiers"`` and ``||`` mean what they mean on the other backends.

URL options: ``pool_min`` (default 1), ``pool_max`` (5), ``connect_timeout`` (5 s;
also how long to wait for a free pooled connection), ``timeout`` (the session's
``max_statement_time``, 30 s), ``ssl``.

A connection idle for more than a second is pinged (and reconnected if it was dropped)
when it is leased, so the store recovers by itself after a server restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import pymysql
import pymysql.err
from pymysql.constants import CLIENT

from multistore.errors import (
    ConfigError,
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
)
from multistore.stores._worker import Worker
from multistore.stores.relational._api import Connection, RelationalStore
from multistore.stores.relational._params import split_statements
from multistore.stores.relational._rows import Columns, Row
from multistore.urls import StoreURL

__all__ = ["MariaDBRelationalStore"]

T = TypeVar("T")
if TYPE_CHECKING:
    MyConn = pymysql.connections.Connection[Any]

_CHECK_AFTER_IDLE: Final = 1.0


class _Slot:
    """One pooled connection and the thread that drives it."""

    def __init__(self, name: str) -> None:
        self.worker = Worker(name)
        self.conn: MyConn | None = None
        self.idle_since = 0.0
        self.broken = False


class MariaDBConnection(Connection):
    dialect = "mariadb"

    def __init__(self, slot: _Slot) -> None:
        super().__init__()
        self._slot = slot

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        slot = self._slot
        try:
            return await slot.worker.run(_guarded, fn, slot.conn, *args)
        except (asyncio.CancelledError, StoreUnavailableError, StoreTimeoutError):
            slot.broken = True  # mid-statement or cut off: never reuse this session
            raise

    async def _execute(self, sql: str, params: Any) -> int:
        return await self._call(_execute, sql, params)

    async def _executemany(self, sql: str, seq_of_params: list[Any]) -> int:
        return await self._call(_executemany, sql, seq_of_params)

    async def _fetch(self, sql: str, params: Any, *, one: bool) -> list[Row]:
        return await self._call(_fetch, sql, params, one)

    async def _script(self, sql: str) -> None:
        for i, statement in enumerate(split_statements(sql, "mariadb")):
            try:
                await self._call(_execute, statement, None)
            except MultistoreError as exc:
                if i and not self._levels:  # the statements before it committed already
                    exc.outcome = Outcome.INDETERMINATE
                raise

    async def _begin(self) -> None:
        await self._execute("START TRANSACTION", None)


class MariaDBRelationalStore(RelationalStore):
    """Relational store on MariaDB or MySQL (``mariadb://user:pass@host:port/db``).

    ``native`` is a connection factory: ``conn = store.native()`` opens a new
    ``pymysql`` connection with the store's settings (blocking; the caller closes it).
    """

    def __init__(self, url: StoreURL, settings: dict[str, Any], first: _Slot) -> None:
        self.url = url
        self._settings = settings
        self._connect_timeout = url.float_option("connect_timeout", 5.0)
        self._timeout = url.float_option("timeout", 30.0)
        self._size = url.int_option("pool_max", 5)
        self._slots: list[_Slot] = [first]
        self._idle: list[_Slot] = [first]
        self._free = asyncio.Semaphore(self._size)
        self._closed = False

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        settings = settings_of(url)
        first = _Slot("mariadb-0")
        try:
            first.conn = await first.worker.run(_connect, settings)
        except BaseException:
            first.worker.close()
            raise
        first.idle_since = time.monotonic()
        store = cls(url, settings, first)
        try:
            for _ in range(1, min(url.int_option("pool_min", 1), store._size)):
                slot = store._new_slot()
                slot.conn = await slot.worker.run(_connect, settings)
                slot.idle_since = time.monotonic()
                store._idle.append(slot)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for slot in self._slots:
            if slot.conn is not None:
                with contextlib.suppress(Exception):
                    await slot.worker.run(slot.conn.close)
            slot.worker.close()

    @property
    def native(self) -> Callable[[], MyConn]:
        return lambda: _connect(self._settings)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        slot = await self._acquire()
        conn = MariaDBConnection(slot)
        try:
            yield conn
        finally:
            conn._released = True
            if conn.in_transaction:  # the block was cancelled mid-exit
                slot.broken = True
            await self._release(slot)

    @contextlib.asynccontextmanager
    async def _migration_connection(self) -> AsyncIterator[Connection]:
        # GET_LOCK is held by the session, across the migrations' transactions.
        name = migration_lock(self.url.database)
        async with self.connection() as conn:
            got = await conn.fetch_val(GET_LOCK, {"name": name, "wait": self._timeout})
            if got != 1:
                raise migration_busy(self.url, name, self._timeout)
            try:
                yield conn
            finally:
                with contextlib.suppress(MultistoreError):
                    await conn.fetch_val(RELEASE_LOCK, {"name": name})

    def _new_slot(self) -> _Slot:
        slot = _Slot(f"mariadb-{len(self._slots)}")
        self._slots.append(slot)
        return slot

    async def _acquire(self) -> _Slot:
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed", outcome=Outcome.DEFINITE)
        try:
            if self._free.locked():  # wait for a session to be handed back, bounded
                # not wait_for: on Python 3.11 it can swallow a cancel that comes as
                # the session is handed over
                async with asyncio.timeout(self._connect_timeout):
                    await self._free.acquire()
            else:
                await self._free.acquire()  # free: returns at once (wait_for costs a task)
        except TimeoutError:
            raise StoreTimeoutError(
                f"no free MariaDB connection within {self._connect_timeout:g} s "
                f"(pool_max={self._size}); raise pool_max or connect_timeout",
                outcome=Outcome.DEFINITE,
            ) from None
        slot = self._idle.pop() if self._idle else self._new_slot()
        try:
            if slot.conn is None:
                slot.conn = await slot.worker.run(_connect, self._settings)
            elif time.monotonic() - slot.idle_since > _CHECK_AFTER_IDLE:
                await slot.worker.run(_ping, slot.conn)
        except BaseException:
            slot.broken = True
            await self._release(slot)
            raise
        return slot

    async def _release(self, slot: _Slot) -> None:
        if slot.conn is not None and (slot.broken or not slot.conn.open):
            conn, slot.conn = slot.conn, None
            with contextlib.suppress(Exception):
                await slot.worker.run(conn.close)
        slot.broken = False
        slot.idle_since = time.monotonic()
        self._idle.append(slot)
        self._free.release()


def settings_of(url: StoreURL) -> dict[str, Any]:
    """PyMySQL's connection settings for the URL and its options."""
    timeout = url.float_option("timeout", 30.0)
    init = (
        "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), "
        f"'ANSI_QUOTES', 'PIPES_AS_CONCAT'), max_statement_time = {timeout:g}"
    )
    settings: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "user": url.username or "root",
        "password": url.password or "",
        "database": url.database,
        "charset": "utf8mb4",
        "autocommit": True,
        "client_flag": CLIENT.FOUND_ROWS,
        "connect_timeout": url.float_option("connect_timeout", 5.0),
        "read_timeout": timeout + 10.0,
        "write_timeout": timeout + 10.0,
        "init_command": init,
    }
    if url.option("ssl", False):
        settings["ssl"] = {"fake_flag_to_enable_tls": True}
    return settings


def migration_lock(database: str | None) -> str:
    """The name of the session lock that serialises migrators of a database."""
    return f"multistore_migrations:{database or ''}"[:64]


GET_LOCK: Final = "SELECT GET_LOCK(:name, :wait)"
RELEASE_LOCK: Final = "SELECT RELEASE_LOCK(:name)"


def migration_busy(url: StoreURL, name: str, timeout: float) -> StoreTimeoutError:
    """The error when the migration lock stayed taken (definite: nothing ran)."""
    return StoreTimeoutError(
        f"another process is migrating {url.database!r}: the migration lock "
        f"{name!r} was not free within {timeout:g} s",
        outcome=Outcome.DEFINITE,
    )


# -- worker-thread functions (the sync store calls them on the caller's thread) --


def _connect(settings: dict[str, Any]) -> MyConn:
    try:
        return pymysql.connect(**settings)
    except pymysql.err.Error as exc:
        mapped = map_error(exc)
        if isinstance(mapped, StoreUnavailableError):
            mapped = StoreUnavailableError(
                f"cannot connect to MariaDB at {settings['host']}:{settings['port']}: "
                f"{mapped.message}",
                outcome=Outcome.DEFINITE,
            )
        raise mapped from exc


def _ping(conn: MyConn) -> None:
    try:
        try:
            conn.ping(reconnect=False)
        except pymysql.err.Error:
            # What ping(reconnect=True) does, without its DeprecationWarning (PyMySQL 1.1+).
            conn.connect()
    except pymysql.err.Error as exc:
        raise StoreUnavailableError(
            f"MariaDB connection lost and reconnecting failed: {map_error(exc).message}",
            outcome=Outcome.DEFINITE,
        ) from exc


def _guarded(fn: Callable[..., T], conn: MyConn | None, *args: Any) -> T:
    if conn is None:
        raise StoreUnavailableError("MariaDB connection is closed", outcome=Outcome.DEFINITE)
    try:
        return fn(conn, *args)
    except pymysql.err.Error as exc:
        raise map_error(exc) from exc
    except (TypeError, ValueError, RecursionError) as exc:
        # PyMySQL escapes values on the client: a value it cannot express.
        raise InvalidValueError(f"mariadb: cannot send a parameter value: {exc}") from exc


#: Values PyMySQL escapes itself. It writes anything else into the statement as
#: ``str(value)``, unquoted: an object whose text is SQL would run as SQL.
_SENDABLE: Final = (
    type(None),
    bool,
    int,
    float,
    str,
    bytes,
    bytearray,
    Decimal,
    dt.date,
    dt.time,
    dt.timedelta,
    uuid.UUID,  # sent as text
)


def _sendable(params: Any) -> Any:
    """The parameters with UUIDs as text; InvalidValueError for a value PyMySQL would
    splice into the SQL unescaped (a list or tuple is sent as ``(a, b, …)``)."""
    if not params:
        return params
    checked: dict[str, Any] = {}
    for name, value in params.items():
        items = value if isinstance(value, list | tuple) else (value,)
        for item in items:
            if not isinstance(item, _SENDABLE):
                raise InvalidValueError(
                    f"mariadb: placeholder :{name} holds a {type(item).__name__}, which "
                    "cannot be sent as a parameter (use str, bytes, a number, Decimal, "
                    "a date/time or UUID)"
                )
        if isinstance(value, uuid.UUID):
            value = str(value)
        elif isinstance(value, list | tuple):
            value = tuple(str(v) if isinstance(v, uuid.UUID) else v for v in value)
        checked[name] = value
    return checked


def _execute(conn: MyConn, sql: str, params: Any) -> int:
    with conn.cursor() as cur:
        cur.execute(sql, _sendable(params))
        return max(int(cur.rowcount), 0)


def _executemany(conn: MyConn, sql: str, seq_of_params: list[Any]) -> int:
    with conn.cursor() as cur:
        cur.executemany(sql, [_sendable(p) for p in seq_of_params])
        return max(int(cur.rowcount), 0)


def _fetch(conn: MyConn, sql: str, params: Any, one: bool) -> list[Row]:
    with conn.cursor() as cur:
        cur.execute(sql, _sendable(params))
        if cur.description is None:
            return []
        columns = Columns([d[0] for d in cur.description])
        if one:
            first = cur.fetchone()
            return [] if first is None else [columns.row(first)]
        return [columns.row(values) for values in cur.fetchall()]


_DUPLICATE: Final = frozenset({1062, 1586, 1022})
_NOT_FOUND: Final = frozenset({1146, 1049, 1051, 1109})
_TIMEOUT: Final = frozenset({1969, 3024, 1205, 1317})
_UNAVAILABLE: Final = frozenset({2002, 2003, 2006, 2013, 2014, 2055, 1053, 1927, 1040})
_ACCESS: Final = frozenset({1044, 1045, 1698})
#: 1241 and 4078: a list parameter, which is sent as a row, where one value belongs.
_BAD_QUERY: Final = frozenset({1054, 1064, 1149, 1305, 1630, 1060, 1061, 1050, 1091, 1241, 4078})
_BAD_VALUE: Final = frozenset({1264, 1265, 1292, 1300, 1365, 1366, 1406, 1367, 1690})


def map_error(exc: pymysql.err.Error) -> MultistoreError:
    """The multistore error for a PyMySQL error; the server's message is kept."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    message = f"mariadb: ({code}) {text}"
    if code in _DUPLICATE:
        return DuplicateKeyError(message)
    if code in _NOT_FOUND:
        return NotFoundError(message)
    if code == 2013 and "timed out" in text:
        return StoreTimeoutError(message)
    if code in _TIMEOUT:
        return StoreTimeoutError(message)
    if code in _UNAVAILABLE or isinstance(exc, pymysql.err.InterfaceError):
        return StoreUnavailableError(message)
    if code in _ACCESS:
        return ConfigError(message)
    if code == 1213:  # deadlock: the transaction was rolled back
        return ConflictError(message)
    if code in _BAD_VALUE or isinstance(exc, pymysql.err.DataError):
        return InvalidValueError(message)
    if isinstance(exc, pymysql.err.IntegrityError) or code in (4025, 3819):
        return ConflictError(message)
    if code in _BAD_QUERY or isinstance(exc, pymysql.err.ProgrammingError):
        return InvalidQueryError(message)
    if isinstance(exc, pymysql.err.NotSupportedError):
        return InvalidQueryError(message)
    return StoreError(message)
