"""The embedded wide-column backend, for async and sync code: one SQLite table per
wide-column table (layout, types and SQL in :mod:`._sqlite_steps`).

:class:`SQLiteWideColumnStore` runs each step of an operation on its
:class:`~multistore.stores._worker.Worker` thread; :class:`SyncSQLiteWideColumnStore`
on the calling thread, under the store's lock.

URL: ``sqlite:///path.db``; options ``timeout`` (busy timeout, default 5 s),
``journal_mode`` (default wal), ``synchronous`` (default normal), ``create``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Self

from multistore.errors import MultistoreError
from multistore.stores._sqlite_common import SQLiteStore, SyncSQLiteStore, connect, start
from multistore.stores._worker import Worker
from multistore.stores.widecolumn._api import Condition, Order, TableSchema, WideColumnStore
from multistore.stores.widecolumn._sqlite_steps import WideColumnSteps, prepare
from multistore.stores.widecolumn._sync_api import SyncWideColumnStore
from multistore.urls import StoreURL

__all__ = ["SQLiteWideColumnStore", "SyncSQLiteWideColumnStore"]

_WHAT = "a wide-column store"


class SQLiteWideColumnStore(SQLiteStore, WideColumnStore):
    """Wide-column tables in one SQLite file (table ``t`` is the SQLite table ``wc_t``)."""

    _noun = "wide-column store"

    def __init__(self, url: StoreURL, worker: Worker, conn: sqlite3.Connection) -> None:
        super().__init__(url, worker, conn)
        self._steps = WideColumnSteps(url)

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        worker, conn = await start("sqlite-widecolumn", connect, url, _WHAT, prepare)
        store = cls(url, worker, conn)
        try:
            await store._drive(store._steps.load())
        except BaseException:
            await store.close()
            raise
        return store

    def _error(self, exc: sqlite3.Error, subject: str | None) -> MultistoreError:
        return self._steps.error(exc)

    async def create_table(self, schema: TableSchema, *, if_not_exists: bool = True) -> None:
        await self._drive(self._steps.create_table(schema, if_not_exists))

    async def drop_table(self, name: str, *, if_exists: bool = False) -> None:
        await self._drive(self._steps.drop_table(name, if_exists))

    async def schema(self, name: str) -> TableSchema:
        return await self._drive(self._steps.schema(name))

    async def tables(self) -> list[str]:
        return await self._drive(self._steps.tables())

    async def upsert(self, table: str, row: Mapping[str, Any], *, ttl: float | None = None) -> None:
        await self.upsert_many(table, [row], ttl=ttl)

    async def upsert_many(
        self, table: str, rows: Sequence[Mapping[str, Any]], *, ttl: float | None = None
    ) -> None:
        await self._drive(self._steps.upsert_many(table, rows, ttl))

    async def select(
        self,
        table: str,
        partition: Mapping[str, Any],
        *,
        where: Sequence[Condition] = (),
        order: Order | None = None,
        limit: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        plan = self._steps.select(table, partition, where, order, limit, columns)
        return await self._drive(plan)

    async def delete(
        self,
        table: str,
        partition: Mapping[str, Any],
        clustering: Mapping[str, Any] | None = None,
    ) -> None:
        await self._drive(self._steps.delete(table, partition, clustering))

    async def purge_expired(self) -> int:
        return await self._drive(self._steps.purge_expired())


class SyncSQLiteWideColumnStore(SyncSQLiteStore, SyncWideColumnStore):
    """Wide-column tables in one SQLite file, for sync code."""

    _noun = "wide-column store"

    def __init__(self, url: StoreURL, conn: sqlite3.Connection) -> None:
        super().__init__(url, conn)
        self._steps = WideColumnSteps(url)

    @classmethod
    def open(cls, url: StoreURL) -> Self:
        store = cls(url, connect(url, _WHAT, prepare, check_same_thread=False))
        try:
            store._drive(store._steps.load())
        except BaseException:
            store.close()
            raise
        return store

    def _error(self, exc: sqlite3.Error, subject: str | None) -> MultistoreError:
        return self._steps.error(exc)

    def create_table(self, schema: TableSchema, *, if_not_exists: bool = True) -> None:
        self._drive(self._steps.create_table(schema, if_not_exists))

    def drop_table(self, name: str, *, if_exists: bool = False) -> None:
        self._drive(self._steps.drop_table(name, if_exists))

    def schema(self, name: str) -> TableSchema:
        return self._drive(self._steps.schema(name))

    def tables(self) -> list[str]:
        return self._drive(self._steps.tables())

    def upsert_many(
        self, table: str, rows: Sequence[Mapping[str, Any]], *, ttl: float | None = None
    ) -> None:
        self._drive(self._steps.upsert_many(table, rows, ttl))

    def select(
        self,
        table: str,
        partition: Mapping[str, Any],
        *,
        where: Sequence[Condition] = (),
        order: Order | None = None,
        limit: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        return self._drive(self._steps.select(table, partition, where, order, limit, columns))

    def delete(
        self,
        table: str,
        partition: Mapping[str, Any],
        clustering: Mapping[str, Any] | None = None,
    ) -> None:
        self._drive(self._steps.delete(table, partition, clustering))

    def purge_expired(self) -> int:
        return self._drive(self._steps.purge_expired())
