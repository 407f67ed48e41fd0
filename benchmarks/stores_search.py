"""Search single-document operations: multistore vs the raw driver doing the same thing.

Both sides hold the same 200-product catalog.

- tantivy: ``index`` one document (replace by id, commit, reload the reader), ``search``
  one term (top 10 with their stored documents) and ``get`` by id, through
  :class:`TantivySearchStore` (a worker thread, validation, query building) against
  plain ``tantivy`` calls on the event-loop thread over an index of the same shape
  (its own directory: tantivy allows one writer per index).
- PostgreSQL: the same three operations through :class:`PostgresSearchStore` (a pool,
  validation, SQL building) against one ``psycopg.AsyncConnection`` running the very
  SQL that the store generates, on the same table.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import tantivy
from psycopg.types.json import Jsonb

from benchmarks._harness import BenchEnv, Row, compare
from multistore.stores import open_store
from multistore.stores.search import FieldType, SearchSchema, SearchStore
from multistore.stores.search._pgsql import search_sql, upsert_sql
from multistore.stores.search._request import build_request, prepare_docs

SCHEMA = SearchSchema(
    {
        "title": FieldType.TEXT,
        "description": FieldType.TEXT,
        "category": FieldType.KEYWORD,
        "price": FieldType.NUMERIC,
    }
)
WORDS = [
    "gaming",
    "office",
    "budget",
    "thin",
    "light",
    "fast",
    "quiet",
    "wireless",
    "blue",
    "cotton",
]
CATEGORIES = ["electronics", "clothing", "books", "accessories"]
CATALOG: list[dict[str, Any]] = [
    {
        "id": f"p{n}",
        "title": f"{WORDS[n % 10]} {'laptop' if n % 4 == 0 else 'gadget'} {n}",
        "description": f"{WORDS[(n * 3) % 10]} and {WORDS[(n * 7) % 10]} for everyday use",
        "category": CATEGORIES[n % 4],
        "price": 10.0 + n * 7.5,
    }
    for n in range(200)
]
DOC = dict(CATALOG[0], description="updated description of a gaming laptop")


async def _open(url: str) -> SearchStore:
    store = await open_store(url, model="search")
    assert isinstance(store, SearchStore)
    return store


def _raw_tantivy(path: str) -> tuple[tantivy.Index, tantivy.Schema, tantivy.IndexWriter]:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("_id", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("_text", tokenizer_name="en_stem")
    builder.add_bytes_field("_source", stored=True)
    builder.add_text_field("category", tokenizer_name="raw", fast=True, index_option="basic")
    builder.add_float_field("price", indexed=True, fast=True)
    schema = builder.build()
    index = tantivy.Index(schema, path=path)
    writer = index.writer(heap_size=20_000_000, num_threads=1)
    return index, schema, writer


def _raw_doc(doc: dict[str, Any]) -> tantivy.Document:
    out = tantivy.Document()
    out.add_text("_id", doc["id"])
    out.add_text("_text", f"{doc['title']} {doc['description']}")
    out.add_bytes("_source", json.dumps(doc).encode())
    out.add_text("category", doc["category"])
    out.add_float("price", doc["price"])
    return out


async def _tantivy_cases(env: BenchEnv) -> list[Row]:
    store = await _open(f"tantivy:///{env.tmp / 'search-ours'}")
    raw_dir = env.tmp / "search-raw"
    raw_dir.mkdir()
    index, schema, writer = _raw_tantivy(str(raw_dir))
    try:
        await store.create_index("bench", SCHEMA)
        await store.index("bench", CATALOG)
        for doc in CATALOG:
            writer.add_document(_raw_doc(doc))
        writer.commit()
        index.reload()

        def raw_index() -> None:
            writer.delete_documents_by_term("_id", DOC["id"])
            writer.add_document(_raw_doc(DOC))
            writer.commit()
            index.reload()

        def raw_search() -> list[Any]:
            searcher = index.searcher()
            query = tantivy.Query.term_query(schema, "_text", "laptop")
            result = searcher.search(query, 10)
            return [json.loads(bytes(searcher.doc(a)["_source"][0])) for _, a in result.hits]

        def raw_get() -> Any:
            searcher = index.searcher()
            result = searcher.search(tantivy.Query.term_query(schema, "_id", "p7"), 1)
            return json.loads(bytes(searcher.doc(result.hits[0][1])["_source"][0]))

        return [
            await compare(
                "search index one doc, tantivy",
                lambda: store.index("bench", [DOC]),
                raw_index,
                "tantivy delete+add+commit+reload",
                ops=10,  # each commit syncs files to disk: tens of ms
                warmup=3,
            ),
            await compare(
                "search one term (top 10), tantivy",
                lambda: store.search("bench", "laptop"),
                raw_search,
                "tantivy term_query + doc()",
            ),
            await compare(
                "search get by id, tantivy",
                lambda: store.get("bench", "p7"),
                raw_get,
                "tantivy term_query on _id",
            ),
        ]
    finally:
        await store.close()


async def _postgres_cases(env: BenchEnv) -> list[Row]:
    url = await env.url("postgresql")
    store = await _open(url)
    raw = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        await store.create_index("bench", SCHEMA)
        await store.index("bench", CATALOG)
        table = "search_bench"
        upsert = upsert_sql(table, SCHEMA)
        item = prepare_docs(SCHEMA, "bench", [DOC])[0]
        upsert_params = (
            item.id,
            Jsonb(item.doc),
            item.text,
            item.keywords["category"],
            item.numbers["price"],
        )
        request = build_request(SCHEMA, "bench", "laptop", None, None, None, None, 0, 10)
        search, search_params = search_sql(table, request)

        async def raw_index() -> None:
            await raw.execute(upsert, upsert_params)

        async def raw_search() -> Any:
            cur = await raw.execute(search, search_params)
            return await cur.fetchone()

        async def raw_get() -> Any:
            cur = await raw.execute("SELECT _doc FROM search_bench WHERE _id = %s", ("p7",))
            return await cur.fetchone()

        return [
            await compare(
                "search index one doc, postgresql",
                lambda: store.index("bench", [DOC]),
                raw_index,
                "psycopg same upsert SQL",
                ops=100,
            ),
            await compare(
                "search one term (top 10), postgresql",
                lambda: store.search("bench", "laptop"),
                raw_search,
                "psycopg same search SQL",
                ops=100,
            ),
            await compare(
                "search get by id, postgresql",
                lambda: store.get("bench", "p7"),
                raw_get,
                "psycopg SELECT by _id",
            ),
        ]
    finally:
        await store.close()
        await raw.close()


async def cases(env: BenchEnv) -> list[Row]:
    return [*await _tantivy_cases(env), *await _postgres_cases(env)]
