"""The seed's Cassandra examples on the quorum cluster, with a node down.

``INSERT INTO users (id, name) VALUES (123, 'Alice')`` written and read at QUORUM,
and ``sensor_readings`` inserts and range reads, on embedded nodes and on Redis
servers (one of which is killed for real).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from multistore.core._quorum import Consistency
from multistore.errors import InvalidValueError
from multistore.lab.servers import RedisServer, unique_name
from multistore.replication._qnodes import SQLiteNode
from multistore.replication._quorum import QuorumError
from multistore.replication._qwidecolumn import QuorumWideColumnStore, encode_key
from multistore.stores.widecolumn import ClusteringColumn, TableSchema

USERS = TableSchema("users", ("id",), columns={"id": "int", "name": "text"})
SENSOR_READINGS = TableSchema(
    "sensor_readings",
    partition_key=("sensor_id",),
    clustering=(ClusteringColumn("timestamp", "desc"),),
    columns={
        "sensor_id": "text",
        "timestamp": "timestamp",
        "temperature": "float",
        "humidity": "float",
    },
)


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.server)])
def wc_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "embedded":
        yield f"quorum:///{tmp_path / 'q'}?nodes=3&n=3&r=quorum&w=quorum"
        return
    servers: list[RedisServer] = request.getfixturevalue("redis_nodes")[:3]
    first, *peers = (f"127.0.0.1:{s.port}" for s in servers)
    yield f"quorum://{first}/0?n=3&prefix={unique_name('wc')}:&peers={','.join(peers)}"
    for server in servers:
        if not server.is_running():
            server.start()


def kill_node1(store: QuorumWideColumnStore, request: pytest.FixtureRequest) -> None:
    """Take node1 down: SIGKILL its Redis server, or switch the embedded node off."""
    node = store.cluster.node("node1")
    if isinstance(node, SQLiteNode):
        node.set_down(True)
    else:
        request.getfixturevalue("redis_nodes")[1].kill()


def test_seed_users_written_and_read_at_quorum(wc_url: str, request: pytest.FixtureRequest) -> None:
    async def body() -> None:
        store = await QuorumWideColumnStore.open_url(wc_url)
        try:
            quorum = store.with_consistency(r=Consistency.QUORUM, w=Consistency.QUORUM)
            await quorum.create_table(USERS)
            await quorum.upsert("users", {"id": 123, "name": "Alice"})
            kill_node1(store, request)
            assert await quorum.select("users", {"id": 123}) == [{"id": 123, "name": "Alice"}]
            await quorum.upsert("users", {"id": 123, "name": "Alice B."})
            assert await quorum.select("users", {"id": 123}) == [{"id": 123, "name": "Alice B."}]
            # ALL cannot be met with a node down; ONE can
            with pytest.raises(QuorumError):
                await store.with_consistency(w=Consistency.ALL).upsert(
                    "users", {"id": 124, "name": "Bob"}
                )
            one = store.with_consistency(r=Consistency.ONE)
            assert (await one.select("users", {"id": 123}))[0]["name"] == "Alice B."
        finally:
            await store.close()

    asyncio.run(body())


def test_seed_sensor_readings_with_a_node_down(wc_url: str, request: pytest.FixtureRequest) -> None:
    async def body() -> None:
        store = await QuorumWideColumnStore.open_url(wc_url)
        try:
            await store.create_table(SENSOR_READINGS)
            start = datetime(2024, 1, 14, 12, 5, tzinfo=UTC)
            await store.upsert_many(
                "sensor_readings",
                [
                    {
                        "sensor_id": "sensor_001",
                        "timestamp": start + timedelta(minutes=10 * i),
                        "temperature": 20.0 + i % 7,
                        "humidity": 45.2,
                    }
                    for i in range(150)
                ],
            )
            kill_node1(store, request)
            await store.upsert(
                "sensor_readings",
                {
                    "sensor_id": "sensor_001",
                    "timestamp": datetime(2024, 1, 15, 10, 30, tzinfo=UTC),
                    "temperature": 23.5,
                    "humidity": 45.2,
                },
            )
            since = datetime(2024, 1, 15, tzinfo=UTC)
            rows = await store.select(
                "sensor_readings",
                {"sensor_id": "sensor_001"},
                where=[("timestamp", ">", since)],
                limit=100,
            )
            stamps = [r["timestamp"] for r in rows]
            assert stamps == sorted(stamps, reverse=True) and all(t > since for t in stamps)
            expected = (
                sum(1 for i in range(150) if start + timedelta(minutes=10 * i) > since) + 1
            )  # plus the 10:30 reading written while node1 was down
            assert len(rows) == min(100, expected)
            assert any(r["temperature"] == 23.5 for r in rows)
        finally:
            await store.close()

    asyncio.run(body())


def test_bad_rows_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    async def body() -> None:
        store = await QuorumWideColumnStore.open_url(f"quorum:///{tmp_path}?nodes=3")
        try:
            await store.create_table(USERS)
            with pytest.raises(InvalidValueError):
                await store.upsert_many(
                    "users", [{"id": 1, "name": "ok"}, {"id": "two", "name": "bad"}]
                )
            assert await store.select("users", {"id": 1}) == []
            writes = store.cluster.stats.writes
            with pytest.raises(InvalidValueError):
                await store.upsert("users", {"id": 2, "name": 7})
            assert store.cluster.stats.writes == writes
        finally:
            await store.close()

    asyncio.run(body())


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        ("int", [-(2**63), -5, -1, 0, 1, 7, 2**63 - 1]),
        ("float", [float("-1e300"), -2.5, -0.0001, 0.0, 1e-300, 3.25, 1e300]),
        ("text", ["", "\x00", "\x00a", "a", "a\x00", "ab", "b", "z\uffff", "é"]),
        ("blob", [b"", b"\x00", b"\x00\x00", b"\x00\xff", b"\x01", b"\xff", b"\xff\xff"]),
        ("bool", [False, True]),
    ],
)
def test_clustering_encoding_preserves_order(kind: str, values: list[object]) -> None:
    for order in ("asc", "desc"):
        schema = TableSchema(
            "t",
            ("p",),
            (ClusteringColumn("c", order), ClusteringColumn("d")),
            {"p": "int", "c": kind, "d": "int"},  # type: ignore[dict-item]
        )
        ordered = values if order == "asc" else values[::-1]
        expected = [encode_key(schema, ["c", "d"], [v, d]) for v in ordered for d in (0, 1)]
        assert sorted(expected) == expected  # byte order is the declared order
