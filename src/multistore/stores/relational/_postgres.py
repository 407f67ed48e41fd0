"""PostgreSQL relational backend: psycopg 3, async, on a ``psycopg_pool`` pool.

Pool connections are in autocommit mode; ``transaction()`` sends ``BEGIN``.
URL options: ``pool_min`` (default 1), ``pool_max`` (10), ``connect_timeout``
(5 s; also how long to wait for a free pooled connection), ``timeout``
(the server's ``statement_timeout``, 30 s), ``sslmode``.

A connection idle for more than a second is checked (an empty query) when it is
leased, so the store recovers by itself after a server restart: dead connections
are dropped and replaced before any statement is sent on them.

Fast path: the store keeps a few recently used connections (at most
``min(4, pool_max // 2)``) out of the pool, each with a reusable cursor, and leases
them without the pool's machinery. Such a connection is used as is only if it was
returned less than a second ago and its socket has nothing to read (a server that
shuts down or ends the session says so on the socket before closing it); otherwise
it gets the same check as a pooled one. Anything that fails, and every connection
the store does not keep, goes back to the pool, which discards broken ones; a kept
connection also goes back once a minute, so the pool's lifetime rules apply to it.
Leases from ``store.native`` draw on the pool's other connections.
"""

from __future__ import annotations

import contextlib
import select
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any, Final, Self

import psycopg
import psycopg.errors
from psycopg.conninfo import make_conninfo
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

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
from multistore.stores.relational._api import Connection, Params, RelationalStore, Transaction
from multistore.stores.relational._params import bind, compile_sql
from multistore.stores.relational._rows import Columns, Row
from multistore.urls import StoreURL

__all__ = [
    "MIGRATION_LOCK",
    "PostgresRelationalStore",
    "columns_of",
    "connect_error",
    "conninfo_of",
    "map_error",
]

_CHECK_AFTER_IDLE: Final = 1.0
#: Most connections the store keeps aside for its fast path (and at most pool_max // 2).
_READY_MAX: Final = 4
#: A kept connection goes back through the pool this often, so that the pool's
#: ``max_lifetime`` and ``max_idle`` apply to it too.
_KEEP_FOR: Final = 60.0
_COLUMNS_MAX: Final = 512
_RECONNECT_GIVE_UP: Final = 1.0
#: Key of the advisory lock that serialises migrators ("multistore" in ASCII, truncated).
MIGRATION_LOCK: Final = 0x6D756C746973746F

PgConn = psycopg.AsyncConnection[Any]
PgCursor = psycopg.AsyncCursor[Any]

_IDLE: Final = TransactionStatus.IDLE
_TUPLES: Final = (ExecStatus.TUPLES_OK, ExecStatus.SINGLE_TUPLE, ExecStatus.TUPLES_CHUNK)
#: Columns by the raw names of a result, so rows of the same shape share one object
#: and ``cursor.description`` is not rebuilt per statement (ASCII names only: they
#: decode the same in every client encoding).
_columns_cache: dict[tuple[bytes | None, ...], Columns] = {}


def columns_of(cur: PgCursor | psycopg.Cursor[Any]) -> Columns | None:
    """The columns of the cursor's (sync or async) current result; None when it
    returns no rows."""
    res = cur.pgresult
    if res is None:
        return None
    n = res.nfields
    if not n:
        return Columns(()) if res.status in _TUPLES else None
    key = tuple([res.fname(i) for i in range(n)])
    columns = _columns_cache.get(key)
    if columns is None:
        description = cur.description or []
        columns = Columns([d.name for d in description])
        if all(name is not None and name.isascii() for name in key):
            if len(_columns_cache) >= _COLUMNS_MAX:
                _columns_cache.clear()
            _columns_cache[key] = columns
    return columns


async def _fetch_on(cur: PgCursor, sql: str, params: Any, *, one: bool) -> list[Row]:
    """Run a query on ``cur`` and build its rows (driver errors are not mapped)."""
    await cur.execute(sql, params)
    columns = columns_of(cur)
    if columns is None:
        return []
    if one:
        first = await cur.fetchone()
        return [] if first is None else [Row(columns, first)]
    return [Row(columns, values) for values in await cur.fetchall()]


class PostgresConnection(Connection):
    dialect = "postgresql"

    def __init__(self, conn: PgConn) -> None:
        super().__init__()
        self._conn = conn

    async def _execute(self, sql: str, params: Any) -> int:
        try:
            async with self._conn.cursor() as cur:
                await cur.execute(sql, params)
                return max(cur.rowcount, 0)
        except (psycopg.Error, ValueError) as exc:
            raise map_error(exc) from exc

    async def _executemany(self, sql: str, seq_of_params: list[Any]) -> int:
        try:
            async with self._conn.cursor() as cur:
                await cur.executemany(sql, seq_of_params)
                return max(cur.rowcount, 0)
        except (psycopg.Error, ValueError) as exc:
            raise map_error(exc) from exc

    async def _fetch(self, sql: str, params: Any, *, one: bool) -> list[Row]:
        try:
            async with self._conn.cursor() as cur:
                return await _fetch_on(cur, sql, params, one=one)
        except (psycopg.Error, ValueError) as exc:
            raise map_error(exc) from exc

    async def _script(self, sql: str) -> None:
        # Without parameters psycopg uses the simple query protocol, which takes
        # several statements at once; they run inside the open transaction.
        await self._execute(sql, None)


class _Slot:
    """A leased connection, the cursor the fast path reuses on it, when it was last
    handed back, and a poller on its socket."""

    __slots__ = ("conn", "cursor", "leased_at", "poller", "used_at")

    def __init__(self, conn: PgConn) -> None:
        self.conn = conn
        self.cursor: PgCursor | None = None
        self.leased_at = self.used_at = time.monotonic()
        self.poller: select.poll | None = None

    def keep(self, now: float) -> None:
        self.used_at = now
        if self.poller is None and hasattr(select, "poll"):  # not on Windows
            with contextlib.suppress(psycopg.Error, OSError):
                poller = select.poll()
                poller.register(self.conn.pgconn.socket, select.POLLIN)
                self.poller = poller

    def suspect(self) -> bool:
        """True when the connection needs a round trip before use: it sat idle, or the
        server sent something unasked (a shutdown or a terminated session does)."""
        if time.monotonic() - self.used_at > _CHECK_AFTER_IDLE:
            return True
        if self.poller is not None:
            return bool(self.poller.poll(0))
        try:
            return bool(select.select([self.conn.pgconn.socket], [], [], 0)[0])
        except (psycopg.Error, OSError, ValueError):
            return True


class PostgresRelationalStore(RelationalStore):
    """Relational store on PostgreSQL (``postgresql://user:pass@host:port/db``).

    ``native`` is the :class:`psycopg_pool.AsyncConnectionPool`
    (``async with store.native.connection() as conn: ...``).
    """

    def __init__(
        self, url: StoreURL, pool: AsyncConnectionPool[PgConn], conninfo: str, health: _Health
    ) -> None:
        self.url = url
        self._pool = pool
        self._conninfo = conninfo
        self._health = health
        self._connect_timeout = url.float_option("connect_timeout", 5.0)
        self._closed = False
        self._ready: list[_Slot] = []
        self._ready_max = min(_READY_MAX, pool.max_size // 2)

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        connect_timeout = url.float_option("connect_timeout", 5.0)
        conninfo = conninfo_of(url)
        # One direct connection first: a refused port or a bad password fails at
        # once with the server's message instead of after the pool's timeout.
        probe = await _connect(conninfo, url)
        await probe.close()
        health = _Health()
        pool: AsyncConnectionPool[PgConn] = AsyncConnectionPool(
            conninfo,
            kwargs={"autocommit": True},
            check=health.check,
            configure=health.configure,
            min_size=url.int_option("pool_min", 1),
            max_size=url.int_option("pool_max", 10),
            timeout=connect_timeout,
            # Give up background reconnection quickly: the pool's backoff would
            # otherwise delay recovery after a restart by up to tens of seconds, while
            # a pool that gave up grows again at once on the next lease.
            reconnect_timeout=_RECONNECT_GIVE_UP,
            open=False,
            name=f"multistore-{url.host}:{url.port}/{url.database}",
        )
        store = cls(url, pool, conninfo, health)
        try:
            await pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout:
            await pool.close()
            raise await store._unavailable() from None
        return store

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            ready, self._ready = self._ready, []
            for slot in ready:
                await self._pool.putconn(slot.conn)
            await self._pool.close(timeout=self._connect_timeout)

    @property
    def native(self) -> AsyncConnectionPool[PgConn]:
        return self._pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        slot = await self._take()
        lease = PostgresConnection(slot.conn)
        try:
            yield lease
        except BaseException:
            lease._released = True
            await self._put(slot.conn)
            raise
        lease._released = True
        await self._give_back(slot)

    # -- one-statement calls: a kept connection and its cursor, no pool round --

    async def execute(self, sql: str, params: Params | None = None) -> int:
        compiled = compile_sql(sql, "postgresql")
        args = bind(compiled, params)
        slot = await self._take()
        try:
            cur = slot.cursor or self._cursor(slot)
            await cur.execute(compiled.sql, args)
            count = max(cur.rowcount, 0)
        except BaseException as exc:
            await self._put(slot.conn)
            if isinstance(exc, psycopg.Error | ValueError):
                raise map_error(exc) from exc
            raise
        await self._give_back(slot)
        return count

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        return await self._fetch(sql, params, one=False)

    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        rows = await self._fetch(sql, params, one=True)
        return rows[0] if rows else None

    async def fetch_val(self, sql: str, params: Params | None = None) -> Any:
        rows = await self._fetch(sql, params, one=True)
        return rows[0][0] if rows else None

    async def _fetch(self, sql: str, params: Params | None, *, one: bool) -> list[Row]:
        compiled = compile_sql(sql, "postgresql")
        args = bind(compiled, params)
        slot = await self._take()
        try:
            rows = await _fetch_on(slot.cursor or self._cursor(slot), compiled.sql, args, one=one)
        except BaseException as exc:
            await self._put(slot.conn)
            if isinstance(exc, psycopg.Error | ValueError):
                raise map_error(exc) from exc
            raise
        await self._give_back(slot)
        return rows

    @staticmethod
    def _cursor(slot: _Slot) -> PgCursor:
        slot.cursor = slot.conn.cursor()
        return slot.cursor

    async def _take(self) -> _Slot:
        """A connection: a kept one if any is fit for use, else one from the pool."""
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed", outcome=Outcome.DEFINITE)
        ready = self._ready
        while ready:
            slot = ready.pop()
            if not slot.suspect():
                return slot
            try:
                await AsyncConnectionPool.check_connection(slot.conn)
            except Exception:
                await self._put(slot.conn)  # broken: the pool drops it and connects anew
                continue
            except BaseException:
                await self._put(slot.conn)
                raise
            return slot
        try:
            conn = await self._pool.getconn()
        except PoolTimeout:
            raise await self._unavailable() from None
        return _Slot(conn)

    async def _give_back(self, slot: _Slot) -> None:
        """Keep a healthy idle connection for the next call, or return it to the pool."""
        now = time.monotonic()
        if (
            len(self._ready) < self._ready_max
            and not self._closed
            and slot.conn.pgconn.transaction_status == _IDLE
            and now - slot.leased_at < _KEEP_FOR
        ):
            slot.keep(now)
            self._ready.append(slot)
        else:
            await self._put(slot.conn)

    async def _put(self, conn: PgConn) -> None:
        self._health.idle_since[conn] = time.monotonic()
        await self._pool.putconn(conn)

    async def _lock_migrations(self, tx: Transaction) -> None:
        await tx.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")

    async def _unavailable(self) -> MultistoreError:
        """The error for a pool that gave no connection in time: the server's own
        refusal when it cannot be reached, else a timeout (the pool is exhausted)."""
        try:
            probe = await _connect(self._conninfo, self.url)
        except MultistoreError as exc:
            return exc
        await probe.close()
        return StoreTimeoutError(
            f"no free PostgreSQL connection within {self._connect_timeout:g} s "
            f"(pool_max={self._pool.max_size}); raise pool_max or connect_timeout",
            outcome=Outcome.DEFINITE,
        )


class _Health:
    """The pool's ``check``: a round trip, but only for connections that sat idle."""

    def __init__(self) -> None:
        self.idle_since: weakref.WeakKeyDictionary[PgConn, float] = weakref.WeakKeyDictionary()

    async def configure(self, conn: PgConn) -> None:
        self.idle_since[conn] = time.monotonic()

    async def check(self, conn: PgConn) -> None:
        if time.monotonic() - self.idle_since.get(conn, 0.0) > _CHECK_AFTER_IDLE:
            await AsyncConnectionPool.check_connection(conn)


def conninfo_of(url: StoreURL) -> str:
    """The libpq connection string for the URL and its options."""
    return make_conninfo(
        "",
        host=url.libpq_host,
        port=url.libpq_port,
        target_session_attrs=url.target_session_attrs,
        user=url.username,
        password=url.password,
        dbname=url.database or "postgres",
        connect_timeout=max(2, round(url.float_option("connect_timeout", 5.0))),
        sslmode=url.str_option("sslmode", "prefer"),
        application_name="multistore",
        options=f"-c statement_timeout={int(url.float_option('timeout', 30.0) * 1000)}",
    )


def connect_error(exc: psycopg.Error, url: StoreURL) -> MultistoreError:
    """The error for a failed connection attempt (definite: nothing was sent)."""
    mapped = map_error(exc)
    if isinstance(mapped, StoreUnavailableError):
        mapped = StoreUnavailableError(
            f"cannot connect to PostgreSQL at {url.host}:{url.port}: {mapped.message}",
            outcome=Outcome.DEFINITE,
        )
    return mapped


async def _connect(conninfo: str, url: StoreURL) -> PgConn:
    try:
        return await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise connect_error(exc, url) from exc


def map_error(exc: psycopg.Error | ValueError) -> MultistoreError:
    """The multistore error for a psycopg error; the server's message is kept. A
    ``ValueError`` comes from turning a parameter into text before anything is sent
    (a string with a lone surrogate, an int too long to print)."""
    if isinstance(exc, ValueError):
        return InvalidValueError(f"postgresql: cannot send a parameter: {exc}")
    message = f"postgresql: {' '.join(str(exc).split())}"
    state = exc.sqlstate or ""
    cls = state[:2]
    if state == "23505":
        return DuplicateKeyError(message)
    if cls == "23":
        return ConflictError(message)
    if state in ("42P01", "3D000", "3F000"):  # table, database, schema
        return NotFoundError(message)
    if state in ("28000", "28P01"):
        return ConfigError(message)
    if cls in ("42", "34", "26", "25", "0A"):
        return InvalidQueryError(message)
    if cls == "22":
        return InvalidValueError(message)
    if state in ("57014", "55P03"):  # statement timeout / query canceled, lock timeout
        return StoreTimeoutError(message)
    if state in ("40001", "40P01"):  # serialization failure, deadlock: rolled back
        return ConflictError(message)
    if cls == "08" or state in ("57P01", "57P02", "57P03"):
        return StoreUnavailableError(message)
    if "does not exist" in message and "database" in message:
        return NotFoundError(message)
    if "password authentication failed" in message:
        return ConfigError(message)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and not state:
        return StoreUnavailableError(message)
    if isinstance(exc, psycopg.DataError) or "cannot adapt" in message:
        return InvalidValueError(message)
    if isinstance(exc, psycopg.ProgrammingError):
        return InvalidQueryError(message)
    return StoreError(message)
