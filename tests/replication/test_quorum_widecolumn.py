"""The seed's Cassandra examples on the quorum cluster, with a node down.

``INSERT INTO users (id, name) VALUES (123, 'Alice')`` written and read at QUORUM,
and ``sensor_readings`` inserts and range reads, on embedded nodes and on Redis
servers (one of which is killed for real).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from multistore.core._quorum import Consistency, QuorumConfig
from multistore.errors import InvalidValueError, Outcome
from multistore.lab.servers import RedisServer, unique_name
from multistore.replication._qnodes import SQLiteNode, parse_entry
from multistore.replication._quorum import QuorumCluster, QuorumError, decode_set
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


async def _expiry(store: QuorumWideColumnStore, node: str) -> float:
    """The expiry time of the one row ``node`` holds (the test's table has one)."""
    quorum_node = store.cluster.node(node)
    for entry, _ in await quorum_node.entries(0, 2**64 - 1):
        group, member = parse_entry(entry)
        record = await quorum_node.read(group, member)
        if group.startswith(b"t:") and record is not None:
            newest = decode_set(record[1]).newest
            assert newest is not None
            expires = newest.value["x"]
            assert isinstance(expires, float)
            return expires
    raise AssertionError(f"{node} holds no row")


def test_a_purged_row_never_brings_back_what_it_overwrote(tmp_path: Path) -> None:
    """A row overwritten by a version with a TTL that one replica missed (its hint
    lived with a coordinator that is gone): once that version has expired,
    ``purge_expired`` and anti-entropy must not bring the overwritten row back."""
    config = QuorumConfig(n=3, r=2, w=2)
    table = TableSchema("t", ("id",), columns={"id": "int", "v": "text"})

    async def body() -> None:
        first = QuorumWideColumnStore(
            await QuorumCluster.embedded(tmp_path, 3, config=config, hints_path=None)
        )
        await first.create_table(table)
        await first.with_consistency(w=Consistency.ALL).upsert("t", {"id": 1, "v": "old"})
        first.cluster.node("node2").set_down(True)  # misses the overwrite
        await first.upsert("t", {"id": 1, "v": "new"}, ttl=0.2)
        expires = await _expiry(first, "node0")
        await first.close()  # its hint for node2 was in memory
        store = QuorumWideColumnStore(
            await QuorumCluster.embedded(tmp_path, 3, config=config, hints_path=None)
        )
        try:
            deadline = time.monotonic() + 30
            while time.time() <= expires:  # wait for the expiry itself, without reading
                if time.monotonic() > deadline:
                    raise TimeoutError("the row did not expire")
                await asyncio.sleep(0.02)
            assert await store.purge_expired() == 1
            await store.cluster.anti_entropy()
            for r in (1, 2, 3):
                assert await store.with_consistency(r=r).select("t", {"id": 1}) == [], r
            for name in store.cluster.nodes:  # gone for good from every replica
                entries = await store.cluster.node(name).entries(0, 2**64 - 1)
                assert not [e for e, _ in entries if parse_entry(e)[0].startswith(b"t:")], name
        finally:
            await store.close()

    asyncio.run(body())


def test_a_batch_with_some_rows_written_never_fails_definitely(tmp_path: Path) -> None:
    """``upsert_many`` writes its rows independently: when one row is refused
    definitely (every replica of its partition down) and another is written, the
    error must not say the write did not happen."""
    table = TableSchema("t", ("id",), columns={"id": "int", "v": "text"})

    async def body() -> None:
        cluster = await QuorumCluster.embedded(tmp_path, 5, config=QuorumConfig(n=3, r=2, w=2))
        store = QuorumWideColumnStore(cluster)
        try:
            await store.create_table(table)
            schema, incarnation = await store._table("t")
            homes = {
                i: set(cluster.preference_list(store._group(schema, incarnation, [i])))
                for i in range(200)
            }
            other = next(i for i in range(1, 200) if len(homes[i] - homes[0]) >= 2)
            for name in homes[0]:
                cluster.node(name).set_down(True)  # row 0 is refused by every replica
            with pytest.raises(QuorumError) as caught:
                await store.upsert_many("t", [{"id": 0, "v": "a"}, {"id": other, "v": "b"}])
            for name in homes[0]:
                cluster.node(name).set_down(False)
            assert await store.select("t", {"id": other}) == [{"id": other, "v": "b"}]
            assert caught.value.outcome is Outcome.INDETERMINATE
            assert "1 of 2 rows were written" in str(caught.value)
        finally:
            await store.close()

    asyncio.run(body())
