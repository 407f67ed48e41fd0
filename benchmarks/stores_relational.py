"""Relational single-row operations: multistore vs the raw driver doing the same thing.

Each backend: insert one row (autocommit) and select one row by primary key, on a
``users (id, email)`` table.

- SQLite: :class:`SQLiteRelationalStore` (``:name`` translation, a worker thread, an
  exclusive lease on the connection) against plain ``sqlite3`` on the event-loop
  thread with ``?`` placeholders, same WAL and ``synchronous=NORMAL`` settings.
- SQLite, sync API (:func:`multistore.sync.open_store`): the same statements on the
  calling thread (no worker hop), against the same plain ``sqlite3`` calls.
- PostgreSQL: :class:`PostgresRelationalStore` (a pooled connection: the store's
  fast path for one-statement calls, see its module) against one bare
  ``psycopg.AsyncConnection`` in autocommit mode, no pool (the strict anchor),
  ``conn.execute()`` with the same statement and values passed as parameters.
- MariaDB: :class:`MariaDBRelationalStore` (a pooled PyMySQL connection driven on its
  worker thread) against one PyMySQL connection called directly, blocking the loop.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator

import psycopg
import pymysql

from benchmarks._harness import BenchEnv, Row, compare
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore
from multistore.sync import RelationalStore as SyncRelationalStore
from multistore.sync import open_store as open_sync_store
from multistore.urls import parse_url

DDL = "CREATE TABLE users (id BIGINT PRIMARY KEY, email VARCHAR(255) NOT NULL)"
INSERT = "INSERT INTO users (id, email) VALUES (:id, :email)"
SELECT = "SELECT id, email FROM users WHERE id = :id"
#: Many short alternating rounds: the machines are shared, and a median over many
#: interleaved rounds moves far less under load than one over five long ones.
OPS, ROUNDS = 100, 15


async def _open(url: str) -> RelationalStore:
    store = await open_store(url, model="relational")
    assert isinstance(store, RelationalStore)
    return store


async def _pair(
    backend: str,
    store: RelationalStore | SyncRelationalStore,
    ours_ids: Iterator[int],
    raw_insert: Callable[[], object],
    raw_select: Callable[[], object],
    insert_anchor: str,
    select_anchor: str,
) -> list[Row]:
    """The two cases of one backend: insert one row and select it by primary key."""
    return [
        await compare(
            f"relational insert one row, {backend}",
            lambda: store.execute(INSERT, {"id": next(ours_ids), "email": "b@x.io"}),
            raw_insert,
            insert_anchor,
            ops=OPS,
            rounds=ROUNDS,
        ),
        await compare(
            f"relational select by primary key, {backend}",
            lambda: store.fetch_one(SELECT, {"id": 0}),
            raw_select,
            select_anchor,
            ops=OPS,
            rounds=ROUNDS,
        ),
    ]


async def _sqlite_cases(env: BenchEnv) -> list[Row]:
    store = await _open(f"sqlite:///{env.tmp / 'relational-ours.db'}")
    sync = open_sync_store(f"sqlite:///{env.tmp / 'relational-sync.db'}", model="relational")
    assert isinstance(sync, SyncRelationalStore)
    raw = sqlite3.connect(env.tmp / "relational-raw.db", isolation_level=None)
    raw.execute("PRAGMA journal_mode = wal")
    raw.execute("PRAGMA synchronous = normal")
    raw.execute("PRAGMA foreign_keys = ON")
    ours_ids, raw_ids = itertools.count(1), itertools.count(1)
    try:
        await store.execute(DDL)
        sync.execute(DDL)
        raw.execute(DDL)
        await store.execute(INSERT, {"id": 0, "email": "alice@example.com"})
        sync.execute(INSERT, {"id": 0, "email": "alice@example.com"})
        raw.execute("INSERT INTO users (id, email) VALUES (?, ?)", (0, "alice@example.com"))

        def raw_insert() -> None:
            raw.execute("INSERT INTO users (id, email) VALUES (?, ?)", (next(raw_ids), "b@x.io"))

        def raw_select() -> object:
            return raw.execute("SELECT id, email FROM users WHERE id = ?", (0,)).fetchone()

        anchors = ("sqlite3 INSERT", "sqlite3 SELECT")
        return [
            *await _pair("sqlite", store, ours_ids, raw_insert, raw_select, *anchors),
            *await _pair(
                "sqlite, sync API", sync, itertools.count(1), raw_insert, raw_select, *anchors
            ),
        ]
    finally:
        await store.close()
        sync.close()
        raw.close()


async def _postgres_cases(env: BenchEnv) -> list[Row]:
    url = await env.url("postgresql")
    parsed = parse_url(url)
    store = await _open(url)
    raw = await psycopg.AsyncConnection.connect(
        host=parsed.host,
        port=parsed.port,
        user=parsed.username,
        dbname=parsed.database,
        autocommit=True,
    )
    ours_ids, raw_ids = itertools.count(1), itertools.count(1)
    try:
        await store.execute(DDL)
        await store.execute("CREATE TABLE raw_users (id BIGINT PRIMARY KEY, email TEXT)")
        await store.execute(INSERT, {"id": 0, "email": "alice@example.com"})
        await raw.execute("INSERT INTO raw_users VALUES (%s, %s)", (0, "alice@example.com"))

        async def raw_insert() -> None:
            await raw.execute("INSERT INTO raw_users VALUES (%s, %s)", (next(raw_ids), "b@x.io"))

        async def raw_select() -> object:
            cur = await raw.execute("SELECT id, email FROM raw_users WHERE id = %s", (0,))
            return await cur.fetchone()

        return await _pair(
            "postgresql",
            store,
            ours_ids,
            raw_insert,
            raw_select,
            "psycopg async INSERT",
            "psycopg async SELECT",
        )
    finally:
        await store.close()
        await raw.close()


async def _mariadb_cases(env: BenchEnv) -> list[Row]:
    url = await env.url("mariadb")
    parsed = parse_url(url)
    store = await _open(url)
    raw = pymysql.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 3306,
        user=parsed.username or "root",
        password=parsed.password or "",
        database=parsed.database,
        charset="utf8mb4",
        autocommit=True,
    )
    ours_ids, raw_ids = itertools.count(1), itertools.count(1)
    try:
        await store.execute(DDL)
        await store.execute("CREATE TABLE raw_users (id BIGINT PRIMARY KEY, email TEXT)")
        await store.execute(INSERT, {"id": 0, "email": "alice@example.com"})
        with raw.cursor() as cur:
            cur.execute("INSERT INTO raw_users VALUES (%s, %s)", (0, "alice@example.com"))

        def raw_insert() -> None:
            with raw.cursor() as cur:
                cur.execute("INSERT INTO raw_users VALUES (%s, %s)", (next(raw_ids), "b@x.io"))

        def raw_select() -> object:
            with raw.cursor() as cur:
                cur.execute("SELECT id, email FROM raw_users WHERE id = %s", (0,))
                return cur.fetchone()

        return await _pair(
            "mariadb",
            store,
            ours_ids,
            raw_insert,
            raw_select,
            "PyMySQL INSERT (blocking)",
            "PyMySQL SELECT (blocking)",
        )
    finally:
        await store.close()
        raw.close()


async def cases(env: BenchEnv) -> list[Row]:
    return [
        *await _sqlite_cases(env),
        *await _postgres_cases(env),
        *await _mariadb_cases(env),
    ]
