"""PostgreSQL relational backend for sync code: psycopg 3's sync connections on a
``psycopg_pool.ConnectionPool``, which threads may share (each lease is a connection
of its own).

Same URL options, connection string, error mapping and result columns as the async
backend (:mod:`._postgres`); the protocol (transactions, savepoints, outcomes) is the
shared :class:`~multistore.stores.relational._protocol.ConnectionCore`. A pooled
connection idle for more than a second is checked before it is leased, so the store
recovers by itself after a server restart.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterator
from typing import Any, Final, Self

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from multistore.errors import MultistoreError, Outcome, StoreTimeoutError, StoreUnavailableError
from multistore.stores.relational._postgres import (
    MIGRATION_LOCK,
    columns_of,
    connect_error,
    conninfo_of,
    map_error,
)
from multistore.stores.relational._rows import Row
from multistore.stores.relational._sync_api import (
    SyncConnection,
    SyncRelationalStore,
    SyncTransaction,
)
from multistore.urls import StoreURL

__all__ = ["SyncPostgresRelationalStore"]

_CHECK_AFTER_IDLE: Final = 1.0

PgConn = psycopg.Connection[Any]


class SyncPostgresConnection(SyncConnection):
    dialect = "postgresql"

    def __init__(self, conn: PgConn) -> None:
        super().__init__()
        self._conn = conn

    def _execute(self, sql: str, params: Any) -> int:
        try:
            with self._conn.cursor() as cur:
                cur.execute(sql, params)
                return max(cur.rowcount, 0)
        except (psycopg.Error, ValueError) as exc:
            raise map_error(exc) from exc

    def _executemany(self, sql: str, seq_of_params: list[Any]) -> int:
        try:
            with self._conn.cursor() as cur:
                cur.executemany(sql, seq_of_params)
                return max(cur.rowcount, 0)
        except (psycopg.Error, ValueError) as exc:
            raise map_error(exc) from exc

    def _fetch(self, sql: str, params: Any, *, one: bool) -> list[Row]:
        try:
            with self._conn.cursor() as cur:
                cur.execute(sql, params)
                columns = columns_of(cur)
                if columns is None:
                    return []
                if one:
                    first = cur.fetchone()
                    return [] if first is None else [Row(columns, first)]
                return [Row(columns, values) for values in cur.fetchall()]
        except (psycopg.Error, ValueError) as exc:
            raise map_error(exc) from exc

    def _script(self, sql: str) -> None:
        # Without parameters psycopg uses the simple query protocol, which takes
        # several statements at once; they run inside the open transaction.
        self._execute(sql, None)


class SyncPostgresRelationalStore(SyncRelationalStore):
    """Relational store on PostgreSQL, for sync code. ``native`` is the
    :class:`psycopg_pool.ConnectionPool`."""

    def __init__(self, url: StoreURL, pool: ConnectionPool[PgConn], conninfo: str) -> None:
        self.url = url
        self._pool = pool
        self._conninfo = conninfo
        self._connect_timeout = url.float_option("connect_timeout", 5.0)
        self._closed = False

    @classmethod
    def open(cls, url: StoreURL) -> Self:
        connect_timeout = url.float_option("connect_timeout", 5.0)
        conninfo = conninfo_of(url)
        _connect(conninfo, url).close()  # a refused port or bad password fails at once
        idle_since: weakref.WeakKeyDictionary[PgConn, float] = weakref.WeakKeyDictionary()

        def configure(conn: PgConn) -> None:
            idle_since[conn] = time.monotonic()

        def check(conn: PgConn) -> None:
            if time.monotonic() - idle_since.get(conn, 0.0) > _CHECK_AFTER_IDLE:
                ConnectionPool.check_connection(conn)

        def reset(conn: PgConn) -> None:
            idle_since[conn] = time.monotonic()

        pool: ConnectionPool[PgConn] = ConnectionPool(
            conninfo,
            kwargs={"autocommit": True},
            check=check,
            configure=configure,
            reset=reset,
            min_size=url.int_option("pool_min", 1),
            max_size=url.int_option("pool_max", 10),
            timeout=connect_timeout,
            reconnect_timeout=1.0,
            open=False,
            name=f"multistore-sync-{url.host}:{url.port}/{url.database}",
        )
        store = cls(url, pool, conninfo)
        try:
            pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout:
            pool.close()
            raise store._unavailable() from None
        return store

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.close(timeout=self._connect_timeout)

    @property
    def native(self) -> ConnectionPool[PgConn]:
        return self._pool

    @contextlib.contextmanager
    def connection(self) -> Iterator[SyncConnection]:
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed", outcome=Outcome.DEFINITE)
        try:
            conn = self._pool.getconn()
        except PoolTimeout:
            raise self._unavailable() from None
        lease = SyncPostgresConnection(conn)
        try:
            yield lease
        finally:
            lease._core.released = True
            self._pool.putconn(conn)

    def _lock_migrations(self, tx: SyncTransaction) -> None:
        tx.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")

    def _unavailable(self) -> MultistoreError:
        """The server's refusal when it cannot be reached, else a pool timeout."""
        try:
            _connect(self._conninfo, self.url).close()
        except MultistoreError as exc:
            return exc
        return StoreTimeoutError(
            f"no free PostgreSQL connection within {self._connect_timeout:g} s "
            f"(pool_max={self._pool.max_size}); raise pool_max or connect_timeout",
            outcome=Outcome.DEFINITE,
        )


def _connect(conninfo: str, url: StoreURL) -> PgConn:
    try:
        return psycopg.Connection.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise connect_error(exc, url) from exc
