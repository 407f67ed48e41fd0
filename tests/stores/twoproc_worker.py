"""One of two processes that change one embedded store at the same time.

``python -m tests.stores.twoproc_worker BACKEND URL TAG GO_FILE`` waits (bounded) until
``GO_FILE`` exists, so that both processes start together, then runs BACKEND's mix of
schema and data operations on URL, names everything it creates after TAG, and prints
one JSON line per operation::

    {"op": "create_index", "args": [...], "ok": true}
    {"op": "index", "args": [...], "ok": false, "error": "StoreUnavailableError",
     "definite": true}

A ``MultistoreError`` is a clean refusal (``ok`` false); anything else is printed as
``{"raw": traceback}`` and the process exits with status 3.
``tests/stores/test_two_processes.py`` then checks that every acknowledged operation
stayed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from multistore.errors import MultistoreError
from multistore.stores import open_store
from multistore.stores.relational import Migration
from multistore.stores.search import FieldType, SearchSchema
from multistore.stores.timeseries import Point
from multistore.stores.widecolumn import ClusteringColumn, TableSchema

ROUNDS = 6
T0 = datetime(2024, 1, 1, tzinfo=UTC)
SEARCH_SCHEMA = SearchSchema({"title": FieldType.TEXT, "tag": FieldType.KEYWORD})
MIGRATIONS = [
    Migration(1, "items", "CREATE TABLE items (id TEXT PRIMARY KEY, n INTEGER NOT NULL)"),
    Migration(2, "items_n", "CREATE INDEX items_n ON items (n)"),
    Migration(3, "notes", "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)"),
]


def wide_schema(name: str) -> TableSchema:
    return TableSchema(
        name,
        partition_key=("p",),
        clustering=(ClusteringColumn("c"),),
        columns={"p": "text", "c": "int", "v": "text"},
    )


class Recorder:
    """Runs operations and prints what became of each."""

    async def __call__(self, op: str, args: list[Any], call: Awaitable[Any]) -> bool:
        try:
            await call
        except MultistoreError as exc:
            line = {"op": op, "args": args, "ok": False, "error": type(exc).__name__}
            line["definite"] = exc.definite
            print(json.dumps(line), flush=True)
            return False
        print(json.dumps({"op": op, "args": args, "ok": True}), flush=True)
        return True


async def search(url: str, tag: str, rec: Recorder) -> None:
    store: Any = await open_store(url, model="search")
    try:
        for i in range(ROUNDS):
            name = f"{tag}{i}"
            await rec("create_index", [name], store.create_index(name, SEARCH_SCHEMA))
            await rec("create_index", ["shared"], store.create_index("shared", SEARCH_SCHEMA))
            doc = {"id": f"{tag}-{i}", "title": f"item {i}", "tag": tag}
            await rec("index", [name, doc["id"]], store.index(name, [doc]))
            await rec("index", ["shared", doc["id"]], store.index("shared", [doc]))
            if i % 3 == 2:
                gone = f"{tag}{i - 1}"
                await rec("drop_index", [gone], store.drop_index(gone))
    finally:
        await store.close()


async def search_creates(url: str, tag: str, rec: Recorder) -> None:
    """Nothing but index definitions: each process creates 12 of its own."""
    store: Any = await open_store(url, model="search")
    try:
        for i in range(12):
            await rec("create_index", [f"{tag}{i}"], store.create_index(f"{tag}{i}", SEARCH_SCHEMA))
    finally:
        await store.close()


async def kv(url: str, tag: str, rec: Recorder) -> None:
    store: Any = await open_store(url, model="kv")
    try:
        for i in range(ROUNDS):
            await rec("set", [f"{tag}:{i}", str(i)], store.set(f"{tag}:{i}", str(i)))
            await rec("incr", ["counter"], store.incr("counter"))
            await rec("zadd", ["board", f"{tag}{i}", i], store.zadd("board", {f"{tag}{i}": i}))
            await rec("delete", [f"{tag}:{i - 1}"], store.delete(f"{tag}:{i - 1}"))
    finally:
        await store.close()


async def document(url: str, tag: str, rec: Recorder) -> None:
    store: Any = await open_store(url, model="document")
    try:
        for i in range(ROUNDS):
            own = f"{tag}c{i}"
            await rec("create_collection", [own], store.create_collection(own))
            await rec("create_index", ["shared", "a.b"], store.create_index("shared", "a.b"))
            await rec("create_index", [own, f"f{i}"], store.create_index(own, f"f{i}"))
            doc_id = f"{tag}{i}"
            body = {"_id": doc_id, "a": {"b": i}}
            await rec("insert", ["shared", doc_id], store.insert("shared", body))
            many = [{"_id": f"{doc_id}-{j}", f"f{i}": j} for j in range(3)]
            await rec("insert_many", [own, [d["_id"] for d in many]], store.insert_many(own, many))
            if i % 3 == 2:
                gone = f"{tag}c{i - 1}"
                await rec("drop_collection", [gone], store.drop_collection(gone))
    finally:
        await store.close()


async def widecolumn(url: str, tag: str, rec: Recorder) -> None:
    store: Any = await open_store(url, model="widecolumn")
    try:
        for i in range(ROUNDS):
            own = f"{tag}t{i}"
            await rec("create_table", [own], store.create_table(wide_schema(own)))
            await rec("create_table", ["shared"], store.create_table(wide_schema("shared")))
            row = {"p": tag, "c": i, "v": f"{tag}{i}"}
            await rec("upsert", ["shared", tag, i], store.upsert("shared", row))
            rows = [{"p": "x", "c": j, "v": own} for j in range(3)]
            await rec("upsert_many", [own, "x", [0, 1, 2]], store.upsert_many(own, rows))
    finally:
        await store.close()


async def relational(url: str, tag: str, rec: Recorder) -> None:
    store: Any = await open_store(url, model="relational")
    try:
        for i in range(ROUNDS):
            await rec("migrate", [], store.migrate(MIGRATIONS))
            rows = [{"id": f"{tag}{i}-{j}", "n": j} for j in range(3)]
            insert = "INSERT INTO items (id, n) VALUES (:id, :n)"
            await rec("executemany", [[r["id"] for r in rows]], store.executemany(insert, rows))
            table = f"{tag}_t{i}"
            ddl = f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)"
            await rec("create_table", [table], store.execute(ddl))
    finally:
        await store.close()


async def _in_a_session(
    url: str, rec: Recorder, model: str, work: Callable[[Any], Awaitable[None]]
) -> None:
    """Open the store (another process may hold the file: a clean refusal), work, close."""
    try:
        store = await open_store(url, model=model)
    except MultistoreError as exc:
        line = {"op": "open", "args": [], "ok": False, "error": type(exc).__name__}
        line["definite"] = exc.definite
        print(json.dumps(line), flush=True)
        return
    try:
        await work(store)
    finally:
        await store.close()


async def graph(url: str, tag: str, rec: Recorder) -> None:
    for i in range(ROUNDS):

        async def work(store: Any, i: int = i) -> None:
            label = f"{tag}L{i}"
            await rec("create_node", [label, "a"], store.create_node(label, "a", {"i": i}))
            await rec(
                "create_node", ["Shared", f"{tag}{i}"], store.create_node("Shared", f"{tag}{i}")
            )
            await rec(
                "create_relationship",
                [label, "a", "Shared", f"{tag}{i}"],
                store.create_relationship(label, "a", "LINKS", "Shared", f"{tag}{i}"),
            )

        await _in_a_session(url, rec, "graph", work)


async def timeseries(url: str, tag: str, rec: Recorder) -> None:
    for i in range(ROUNDS):

        async def work(store: Any, i: int = i) -> None:
            own = Point(f"{tag}m{i}", {"host": tag}, {"v": float(i)}, T0)
            shared = Point("shared", {"host": tag}, {"v": float(i)}, T0 + timedelta(seconds=i))
            await rec("write", [own.measurement, tag, 0], store.write_many([own]))
            await rec("write", ["shared", tag, i], store.write_many([shared]))

        await _in_a_session(url, rec, "timeseries", work)


SCENARIOS: dict[str, Callable[[str, str, Recorder], Awaitable[None]]] = {
    "tantivy": search,
    "tantivy-creates": search_creates,
    "sqlite-kv": kv,
    "sqlite-document": document,
    "sqlite-widecolumn": widecolumn,
    "sqlite-relational": relational,
    "ladybug": graph,
    "duckdb": timeseries,
}


def main() -> None:
    backend, url, tag, go = sys.argv[1:5]
    deadline = time.monotonic() + 30
    while not Path(go).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the start signal never came")
        time.sleep(0.01)
    try:
        asyncio.run(SCENARIOS[backend](url, tag, Recorder()))
    except BaseException:
        print(json.dumps({"raw": traceback.format_exc()}), flush=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
