"""Document single-document operations and a simple find: multistore vs the raw driver.

Each case runs the same SQL both ways, so the ratio is what the document layer costs
(argument and document checks, filter parsing and compiling, JSON encoding, the
worker thread or the pool):

- SQLite: ``insert`` / ``get`` / ``find`` through :class:`SQLiteDocumentStore` (a
  worker thread) against plain ``sqlite3`` on the event-loop thread, same file
  settings (WAL, ``synchronous=NORMAL``) and the same table layout.
- PostgreSQL: the same through :class:`PostgresDocumentStore` (a pool) against one
  bare ``psycopg.AsyncConnection`` in autocommit mode.

The find is the seed's catalog query, ``{"category": "electronics", "price":
{"$lt": 1000}}`` sorted by price descending, limit 10, over 1,000 products with
indexes on ``category`` and ``price``; the anchor runs the SQL our compiler makes.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from typing import Any

import psycopg

from benchmarks._harness import BenchEnv, Row, compare
from multistore.stores import open_store
from multistore.stores.document import DocumentStore
from multistore.stores.document import _postgres_sql as pg_sql
from multistore.stores.document import _sqlite_sql as sqlite_sql
from multistore.stores.document._filters import parse_filter, parse_sort

DOC = {
    "name": "Laptop",
    "category": "electronics",
    "price": 999.99,
    "specs": {"cpu": "Intel i7", "ram": "16GB", "storage": "512GB SSD"},
    "reviews": [{"user": "alice", "rating": 5, "comment": "Great!"}],
}
FILTER = {"category": "electronics", "price": {"$lt": 1000}}
SORT = [("price", -1)]
CATEGORIES = ["electronics", "clothing", "books", "toys"]


def _catalog() -> list[dict[str, Any]]:
    return [
        {"_id": f"prod_{i}", **DOC, "category": CATEGORIES[i % 4], "price": (i * 37) % 2000}
        for i in range(1000)
    ]


async def _open(url: str) -> DocumentStore:
    store = await open_store(url, model="document")
    assert isinstance(store, DocumentStore)
    return store


async def _prepare(store: DocumentStore) -> None:
    await store.insert_many("products", _catalog())
    await store.create_index("products", "category")
    await store.create_index("products", "price")
    await store.insert("docs", {"_id": "doc_1", **DOC})


async def _sqlite_cases(env: BenchEnv) -> list[Row]:
    path = env.tmp / "documents.db"
    store = await _open(f"sqlite:///{path}")
    await _prepare(store)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA journal_mode = wal")
    raw.execute("PRAGMA synchronous = normal")
    raw.execute(
        "CREATE TABLE raw_docs (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
        "doc TEXT NOT NULL)"
    )
    raw.execute("INSERT INTO raw_docs (id, doc) VALUES (?, ?)", ("doc_1", json.dumps(DOC)))
    where, params = sqlite_sql.compile_filter(parse_filter(FILTER))
    find_sql = (
        f"SELECT doc FROM doc_products WHERE {where} "
        f"ORDER BY {sqlite_sql.compile_sort(parse_sort(SORT))} LIMIT 10 OFFSET 0"
    )
    ours_ids, raw_ids = itertools.count(), itertools.count()

    def raw_insert() -> None:
        doc = {"_id": f"r{next(raw_ids)}", **DOC}
        raw.execute("INSERT INTO raw_docs (id, doc) VALUES (?, ?)", (doc["_id"], json.dumps(doc)))

    def raw_get() -> Any:
        row = raw.execute("SELECT doc FROM raw_docs WHERE id = ?", ("doc_1",)).fetchone()
        return json.loads(row[0])

    def raw_find() -> Any:
        return [json.loads(r[0]) for r in raw.execute(find_sql, params).fetchall()]

    try:
        return [
            await compare(
                "document insert one doc, sqlite",
                lambda: store.insert("docs", {"_id": f"o{next(ours_ids)}", **DOC}),
                raw_insert,
                "sqlite3 INSERT",
            ),
            await compare(
                "document get by id, sqlite",
                lambda: store.get("docs", "doc_1"),
                raw_get,
                "sqlite3 SELECT by id",
            ),
            await compare(
                "document find (2 conditions, sort, limit 10 of 1000), sqlite",
                lambda: store.find("products", FILTER, sort=SORT, limit=10),
                raw_find,
                "sqlite3, the same SQL",
                ops=100,
            ),
        ]
    finally:
        await store.close()
        raw.close()


async def _postgres_cases(env: BenchEnv) -> list[Row]:
    url = await env.url("postgresql")
    store = await _open(url)
    await _prepare(store)
    raw = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await raw.execute(
        "CREATE TABLE raw_docs (seq bigserial PRIMARY KEY, id text NOT NULL UNIQUE, "
        "doc jsonb NOT NULL)"
    )
    await raw.execute(
        "INSERT INTO raw_docs (id, doc) VALUES (%s, %s::jsonb)", ("doc_1", json.dumps(DOC))
    )
    await raw.execute("VACUUM ANALYZE doc_products")
    where, params = pg_sql.compile_filter(parse_filter(FILTER))
    find_sql = (
        f"SELECT doc FROM doc_products WHERE {where} "
        f"ORDER BY {pg_sql.compile_sort(parse_sort(SORT))} LIMIT 10 OFFSET 0"
    ).encode()
    ours_ids, raw_ids = itertools.count(), itertools.count()

    async def raw_insert() -> None:
        doc = {"_id": f"r{next(raw_ids)}", **DOC}
        await raw.execute(
            "INSERT INTO raw_docs (id, doc) VALUES (%s, %s::jsonb)", (doc["_id"], json.dumps(doc))
        )

    async def raw_get() -> Any:
        cur = await raw.execute("SELECT doc FROM raw_docs WHERE id = %s", ("doc_1",))
        return await cur.fetchone()

    async def raw_find() -> Any:
        cur = await raw.execute(find_sql, params)
        return await cur.fetchall()

    try:
        return [
            await compare(
                "document insert one doc, postgresql",
                lambda: store.insert("docs", {"_id": f"o{next(ours_ids)}", **DOC}),
                raw_insert,
                "psycopg INSERT",
            ),
            await compare(
                "document get by id, postgresql",
                lambda: store.get("docs", "doc_1"),
                raw_get,
                "psycopg SELECT by id",
            ),
            await compare(
                "document find (2 conditions, sort, limit 10 of 1000), postgresql",
                lambda: store.find("products", FILTER, sort=SORT, limit=10),
                raw_find,
                "psycopg, the same SQL",
                ops=100,
            ),
        ]
    finally:
        await store.close()
        await raw.close()


async def cases(env: BenchEnv) -> list[Row]:
    return [*await _sqlite_cases(env), *await _postgres_cases(env)]
