"""Graph model: create one node, and read the neighbours of one node, through multistore
against the raw driver running the same Cypher (Ladybug's ``Connection.execute`` on a
database of its own; the ``falkordb.asyncio`` client on a graph of its own)."""

from __future__ import annotations

import itertools
from typing import Any

import ladybug
from falkordb.asyncio import FalkorDB

from benchmarks._harness import BenchEnv, Row, compare
from multistore.stores import open_store
from multistore.stores.graph import GraphStore
from multistore.urls import parse_url

OPS = 200
FRIENDS = 10
CREATE = "MERGE (x:`User` {`key`: $key}) SET x.`age` = $p0"
NEIGHBORS = "MATCH (u:`User` {`key`: $key})-[:`FOLLOWS`]->(n) RETURN DISTINCT n"
NEIGHBORS_FALKORDB = (
    "MATCH (u:`User` {`key`: $key}) OPTIONAL MATCH (u)-[:`FOLLOWS`]->(n) RETURN DISTINCT n"
)


async def _graph(url: str) -> GraphStore:
    store = await open_store(url, model="graph")
    assert isinstance(store, GraphStore)
    return store


async def _star(store: GraphStore) -> None:
    """User hub follows FRIENDS users."""
    await store.create_node("User", "hub", {"age": 1})
    for i in range(FRIENDS):
        await store.create_node("User", f"f{i}", {"age": i})
        await store.create_relationship("User", "hub", "FOLLOWS", "User", f"f{i}")


async def _ladybug_cases(env: BenchEnv) -> list[Row]:
    store = await _graph(f"ladybug:///{env.tmp / 'bench-graph.lbdb'}")
    db = ladybug.Database(str(env.tmp / "bench-graph-raw.lbdb"))
    conn = ladybug.Connection(db)
    try:
        await _star(store)
        conn.execute("CREATE NODE TABLE User(key STRING PRIMARY KEY, age INT64)")
        conn.execute("CREATE REL TABLE FOLLOWS(FROM User TO User)")
        conn.execute(CREATE, {"key": "hub", "p0": 1})
        for i in range(FRIENDS):
            conn.execute(CREATE, {"key": f"f{i}", "p0": i})
            conn.execute(
                "MATCH (a:User {key: 'hub'}), (b:User {key: $key}) MERGE (a)-[:FOLLOWS]->(b)",
                {"key": f"f{i}"},
            )
        ours_ids, raw_ids = itertools.count(), itertools.count()

        async def ours_create() -> None:
            i = next(ours_ids)
            await store.create_node("User", f"n{i}", {"age": i})

        def raw_create() -> None:
            i = next(raw_ids)
            conn.execute(CREATE, {"key": f"n{i}", "p0": i})

        async def ours_neighbors() -> object:
            return await store.neighbors("User", "hub", "FOLLOWS")

        def raw_neighbors() -> object:
            return conn.execute(NEIGHBORS, {"key": "hub"}).get_all()  # type: ignore[union-attr]

        return [
            await compare(
                "graph create one node, ladybug",
                ours_create,
                raw_create,
                "ladybug Connection.execute",
                ops=OPS,
            ),
            await compare(
                "graph neighbours of one node, ladybug",
                ours_neighbors,
                raw_neighbors,
                "ladybug Connection.execute",
                ops=OPS,
            ),
        ]
    finally:
        await store.close()
        conn.close()
        db.close()


async def _falkordb_cases(env: BenchEnv) -> list[Row]:
    url = await env.url("falkordb")
    store = await _graph(url)
    parsed = parse_url(url)
    client = FalkorDB(host=parsed.host, port=parsed.port)
    raw: Any = client.select_graph(f"{parsed.database}_raw")
    try:
        await _star(store)
        await raw.query("CREATE INDEX FOR (n:User) ON (n.key)")
        await raw.query(CREATE, {"key": "hub", "p0": 1})
        for i in range(FRIENDS):
            await raw.query(CREATE, {"key": f"f{i}", "p0": i})
            await raw.query(
                "MATCH (a:User {key: 'hub'}), (b:User {key: $key}) MERGE (a)-[:FOLLOWS]->(b)",
                {"key": f"f{i}"},
            )
        ours_ids, raw_ids = itertools.count(), itertools.count()

        async def ours_create() -> None:
            i = next(ours_ids)
            await store.create_node("User", f"n{i}", {"age": i})

        async def raw_create() -> None:
            i = next(raw_ids)
            await raw.query(CREATE, {"key": f"n{i}", "p0": i})

        async def ours_neighbors() -> object:
            return await store.neighbors("User", "hub", "FOLLOWS")

        async def raw_neighbors() -> object:
            return (await raw.query(NEIGHBORS_FALKORDB, {"key": "hub"})).result_set

        return [
            await compare(
                "graph create one node, falkordb",
                ours_create,
                raw_create,
                "falkordb.asyncio graph.query",
                ops=OPS,
            ),
            await compare(
                "graph neighbours of one node, falkordb",
                ours_neighbors,
                raw_neighbors,
                "falkordb.asyncio graph.query",
                ops=OPS,
            ),
        ]
    finally:
        await store.clear()
        await raw.delete()
        await store.close()
        await client.connection.aclose()


async def cases(env: BenchEnv) -> list[Row]:
    return [*await _ladybug_cases(env), *await _falkordb_cases(env)]
