"""Key-value single-key operations: multistore vs the raw driver doing the same thing.

- SQLite: ``set``/``get`` of one key through :class:`SQLiteKeyValueStore` (a worker
  thread, a ``BEGIN IMMEDIATE`` transaction per write, lazy TTL checks) against
  plain ``sqlite3`` on the event-loop thread with an ``INSERT OR REPLACE`` /
  ``SELECT`` on a two-column table, same WAL and ``synchronous=NORMAL`` settings.
- Redis: ``set``/``get`` through :class:`RedisKeyValueStore` against a bare
  ``redis.asyncio.Redis`` client on the same server.
- The sync API (:func:`multistore.sync.open_store`): SQLite ``set``/``get`` on the
  calling thread against the same plain ``sqlite3`` calls, and Redis ``get`` through
  the sync store against a bare ``redis.Redis`` client.
"""

from __future__ import annotations

import sqlite3

import redis
import redis.asyncio as aioredis

from benchmarks._harness import BenchEnv, Row, compare
from multistore.stores import open_store
from multistore.stores.kv import KeyValueStore
from multistore.sync import KeyValueStore as SyncKeyValueStore
from multistore.sync import open_store as open_sync_store

VALUE = b'{"user_id":123,"username":"alice","roles":["user","premium"]}'


async def _open(url: str) -> KeyValueStore:
    store = await open_store(url, model="kv")
    assert isinstance(store, KeyValueStore)
    return store


def _open_sync(url: str) -> SyncKeyValueStore:
    store = open_sync_store(url, model="kv")
    assert isinstance(store, SyncKeyValueStore)
    return store


async def _sqlite_cases(env: BenchEnv) -> list[Row]:
    store = await _open(f"sqlite:///{env.tmp / 'kv-ours.db'}")
    sync = _open_sync(f"sqlite:///{env.tmp / 'kv-ours-sync.db'}")
    raw = sqlite3.connect(env.tmp / "kv-raw.db", isolation_level=None)
    raw.execute("PRAGMA journal_mode = wal")
    raw.execute("PRAGMA synchronous = normal")
    raw.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID")
    try:
        await store.set("session:abc123", VALUE)
        sync.set("session:abc123", VALUE)
        raw.execute("INSERT INTO kv VALUES (?, ?)", ("session:abc123", VALUE))

        def raw_set() -> None:
            raw.execute(
                "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", ("session:abc123", VALUE)
            )

        def raw_get() -> bytes:
            row = raw.execute("SELECT value FROM kv WHERE key = ?", ("session:abc123",)).fetchone()
            return bytes(row[0])

        return [
            await compare(
                "kv set one key, sqlite",
                lambda: store.set("session:abc123", VALUE),
                raw_set,
                "sqlite3 INSERT OR REPLACE",
            ),
            await compare(
                "kv get one key, sqlite",
                lambda: store.get("session:abc123"),
                raw_get,
                "sqlite3 SELECT",
            ),
            await compare(
                "kv set one key, sqlite, sync API",
                lambda: sync.set("session:abc123", VALUE),
                raw_set,
                "sqlite3 INSERT OR REPLACE",
            ),
            await compare(
                "kv get one key, sqlite, sync API",
                lambda: sync.get("session:abc123"),
                raw_get,
                "sqlite3 SELECT",
            ),
        ]
    finally:
        await store.close()
        sync.close()
        raw.close()


async def _redis_cases(env: BenchEnv) -> list[Row]:
    url = await env.url("redis")
    store = await _open(url)
    sync = _open_sync(url)
    raw = aioredis.Redis.from_url(url)
    raw_sync = redis.Redis.from_url(url)
    try:
        await store.set("session:abc123", VALUE)
        await raw.set("raw:session:abc123", VALUE)
        return [
            await compare(
                "kv set one key, redis",
                lambda: store.set("session:abc123", VALUE),
                lambda: raw.set("raw:session:abc123", VALUE),
                "redis-py asyncio SET",
            ),
            await compare(
                "kv get one key, redis",
                lambda: store.get("session:abc123"),
                lambda: raw.get("raw:session:abc123"),
                "redis-py asyncio GET",
            ),
            await compare(
                "kv get one key, redis, sync API",
                lambda: sync.get("session:abc123"),
                lambda: raw_sync.get("raw:session:abc123"),
                "redis-py GET",
            ),
        ]
    finally:
        await store.close()
        sync.close()
        await raw.aclose()
        raw_sync.close()


async def cases(env: BenchEnv) -> list[Row]:
    return [*await _sqlite_cases(env), *await _redis_cases(env)]
