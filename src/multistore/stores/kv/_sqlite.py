"""The embedded key-value backend: one SQLite file, Redis semantics, for async and
sync code.

The layout, the SQL and the checks are in :mod:`multistore.stores.kv._sqlite_sql`;
this module holds the two thin drivers that run an operation's step:

- :class:`SQLiteKeyValueStore` (async): the connection lives on a
  :class:`~multistore.stores._worker.Worker` thread, so the event loop never waits
  on the file.
- :class:`SyncSQLiteKeyValueStore` (sync, :func:`multistore.sync.open_store`): the
  step runs on the calling thread, under the store's lock, with no thread hop.

WAL journal, ``synchronous=NORMAL`` and ``busy_timeout`` (the URL's ``timeout``,
default 5 s) are set on open.

URL: ``sqlite:///path.db`` (``sqlite:///:memory:`` for a private in-memory
store). Options: ``timeout``, ``journal_mode``, ``synchronous``, ``create``
(default true; false refuses to create a missing file) and ``prefix`` (prepended
to every key, as for Redis).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Self

from multistore.stores._sqlite_common import SQLiteStore, SyncSQLiteStore, connect, start
from multistore.stores._worker import Worker
from multistore.stores.kv._api import KeyValueStore, RateLimit
from multistore.stores.kv._sqlite_sql import KeyValueSteps, prepare
from multistore.stores.kv._sync_api import SyncKeyValueStore
from multistore.urls import StoreURL

__all__ = ["SQLiteKeyValueStore", "SyncSQLiteKeyValueStore"]

_WHAT = "a key-value store"


class SQLiteKeyValueStore(SQLiteStore, KeyValueStore):
    """Key-value store in one SQLite file, for async code (see the module docstring)."""

    _noun = "key-value store"

    def __init__(
        self, url: StoreURL, worker: Worker, conn: sqlite3.Connection, prefix: str
    ) -> None:
        super().__init__(url, worker, conn)
        self._steps = KeyValueSteps(prefix)

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        worker, conn = await start("sqlite-kv", connect, url, _WHAT, prepare)
        return cls(url, worker, conn, url.str_option("prefix", ""))

    async def get(self, key: str) -> bytes | None:
        return await self._call(self._steps.get(key))

    async def set(self, key: str, value: bytes | str, *, ttl: float | None = None) -> None:
        await self._call(self._steps.set(key, value, ttl))

    async def set_if_absent(
        self, key: str, value: bytes | str, *, ttl: float | None = None
    ) -> bool:
        return await self._call(self._steps.set_if_absent(key, value, ttl))

    async def compare_and_set(
        self,
        key: str,
        expected: bytes | str | None,
        value: bytes | str,
        *,
        ttl: float | None = None,
    ) -> bool:
        return await self._call(self._steps.compare_and_set(key, expected, value, ttl))

    async def delete(self, *keys: str) -> int:
        return await self._call(self._steps.delete(keys))

    async def expire(self, key: str, ttl: float) -> bool:
        return await self._call(self._steps.expire(key, ttl))

    async def ttl(self, key: str) -> float | None:
        return await self._call(self._steps.ttl(key))

    async def incr(self, key: str, amount: int = 1) -> int:
        return await self._call(self._steps.incr(key, amount))

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self._call(self._steps.mget(keys))

    async def scan(self, prefix: str = "") -> list[str]:
        return await self._call(self._steps.scan(prefix))

    async def zadd(self, key: str, mapping: dict[str, float]) -> int:
        return await self._call(self._steps.zadd(key, mapping))

    async def zscore(self, key: str, member: str) -> float | None:
        return await self._call(self._steps.zscore(key, member))

    async def zincrby(self, key: str, member: str, amount: float) -> float:
        return await self._call(self._steps.zincrby(key, member, amount))

    async def zrange(
        self, key: str, start: int, stop: int, *, desc: bool = False
    ) -> list[tuple[str, float]]:
        return await self._call(self._steps.zrange(key, start, stop, desc))

    async def zrank(self, key: str, member: str, *, desc: bool = False) -> int | None:
        return await self._call(self._steps.zrank(key, member, desc))

    async def zrem(self, key: str, *members: str) -> int:
        return await self._call(self._steps.zrem(key, members))

    async def rate_limit(self, key: str, limit: int, window: float) -> RateLimit:
        return await self._call(self._steps.rate_limit(key, limit, window))

    async def purge_expired(self, prefix: str = "") -> int:
        return await self._call(self._steps.purge_expired(prefix))


class SyncSQLiteKeyValueStore(SyncSQLiteStore, SyncKeyValueStore):
    """Key-value store in one SQLite file, for sync code: each operation runs on the
    calling thread (see the module docstring)."""

    _noun = "key-value store"

    def __init__(self, url: StoreURL, conn: sqlite3.Connection, prefix: str) -> None:
        super().__init__(url, conn)
        self._steps = KeyValueSteps(prefix)

    @classmethod
    def open(cls, url: StoreURL) -> Self:
        conn = connect(url, _WHAT, prepare, check_same_thread=False)
        return cls(url, conn, url.str_option("prefix", ""))

    def get(self, key: str) -> bytes | None:
        return self._call(self._steps.get(key))

    def set(self, key: str, value: bytes | str, *, ttl: float | None = None) -> None:
        self._call(self._steps.set(key, value, ttl))

    def set_if_absent(self, key: str, value: bytes | str, *, ttl: float | None = None) -> bool:
        return self._call(self._steps.set_if_absent(key, value, ttl))

    def compare_and_set(
        self,
        key: str,
        expected: bytes | str | None,
        value: bytes | str,
        *,
        ttl: float | None = None,
    ) -> bool:
        return self._call(self._steps.compare_and_set(key, expected, value, ttl))

    def delete(self, *keys: str) -> int:
        return self._call(self._steps.delete(keys))

    def expire(self, key: str, ttl: float) -> bool:
        return self._call(self._steps.expire(key, ttl))

    def ttl(self, key: str) -> float | None:
        return self._call(self._steps.ttl(key))

    def incr(self, key: str, amount: int = 1) -> int:
        return self._call(self._steps.incr(key, amount))

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return self._call(self._steps.mget(keys))

    def scan(self, prefix: str = "") -> list[str]:
        return self._call(self._steps.scan(prefix))

    def zadd(self, key: str, mapping: dict[str, float]) -> int:
        return self._call(self._steps.zadd(key, mapping))

    def zscore(self, key: str, member: str) -> float | None:
        return self._call(self._steps.zscore(key, member))

    def zincrby(self, key: str, member: str, amount: float) -> float:
        return self._call(self._steps.zincrby(key, member, amount))

    def zrange(
        self, key: str, start: int, stop: int, *, desc: bool = False
    ) -> list[tuple[str, float]]:
        return self._call(self._steps.zrange(key, start, stop, desc))

    def zrank(self, key: str, member: str, *, desc: bool = False) -> int | None:
        return self._call(self._steps.zrank(key, member, desc))

    def zrem(self, key: str, *members: str) -> int:
        return self._call(self._steps.zrem(key, members))

    def rate_limit(self, key: str, limit: int, window: float) -> RateLimit:
        return self._call(self._steps.rate_limit(key, limit, window))

    def purge_expired(self, prefix: str = "") -> int:
        return self._call(self._steps.purge_expired(prefix))
