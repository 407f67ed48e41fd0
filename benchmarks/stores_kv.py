"""Key-value single-key operations: multistore vs the raw driver doing the same thing.

- SQLite: ``set``/``get`` of one key through :class:`SQLiteKeyValueStore` (a worker
  thread, a ``BEGIN IMMEDIATE`` transaction per write, lazy TTL checks) against
  plain ``sqlite3`` on the event-loop thread with an ``INSERT OR REPLACE`` /
  ``SELECT`` on a two-column table, same WAL and ``synchronous=NORMAL`` settings.
- Redis: ``set``/``get`` through :class:`RedisKeyValueStore` against a bare
  ``redis.asyncio.Redis`` client on the same server.
"""

from __future__ import annotations

import sqlite3

import redis.asyncio as aioredis

from benchmarks._harness import BenchEnv, Row, compare
from multistore.stores import open_store
from multistore.stores.kv import KeyValueStore

VALUE = b'{"user_id":123,"username":"alice","roles":["user","premium"]}'


async def _open(url: str) -> KeyValueStore:
    store = await open_store(url, model="kv")
    assert isinstance(store, KeyValueStore)
    return store


async def _sqlite_cases(env: BenchEnv) -> list[Row]:
    store = await _open(f"sqlite:///{env.tmp / 'kv-ours.db'}")
    raw = sqlite3.connect(env.tmp / "kv-raw.db", isolation_level=None)
    raw.execute("PRAGMA journal_mode = wal")
    raw.execute("PRAGMA synchronous = normal")
    raw.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID")
    try:
        await store.set("session:abc123", VALUE)
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
        ]
    finally:
        await store.close()
        raw.close()


async def _redis_cases(env: BenchEnv) -> list[Row]:
    url = await env.url("redis")
    store = await _open(url)
    raw = aioredis.Redis.from_url(url)
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
        ]
    finally:
        await store.close()
        await raw.aclose()


async def cases(env: BenchEnv) -> list[Row]:
    return [*await _sqlite_cases(env), *await _redis_cases(env)]
