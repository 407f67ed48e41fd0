"""The wide-column conformance suite, run against every wide-column backend.

Backends: SQLite (through the async and the sync API, :mod:`tests.stores.apis`), the
quorum cluster (embedded SQLite nodes, and Redis nodes), and Redis Cluster (a partition
per hash slot).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from multistore.errors import ConflictError, InvalidQueryError, InvalidValueError, NotFoundError
from multistore.stores.widecolumn import ClusteringColumn, TableSchema, WideColumnStore
from tests.stores.apis import open_with

Body = Callable[[WideColumnStore], Awaitable[None]]

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

# Event tracking: partition (user_id, day), rows by time then event id.
EVENTS = TableSchema(
    "events",
    partition_key=("user_id", "day"),
    clustering=(ClusteringColumn("ts", "asc"), ClusteringColumn("event_id", "desc")),
    columns={"user_id": "int", "day": "text", "ts": "int", "event_id": "text", "kind": "text"},
)


_api = "async"  # the API that _open uses, set by the fixture below


@pytest.fixture(
    params=[
        "sqlite",
        "sqlite-sync",
        "quorum",
        pytest.param("quorum-redis", marks=pytest.mark.server),
        pytest.param("redis-cluster", marks=pytest.mark.server),
    ]
)
def wc_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    global _api
    _api = "sync" if request.param == "sqlite-sync" else "async"
    if request.param.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'wc.db'}?model=widecolumn"
    elif request.param == "redis-cluster":  # a partition per hash slot
        yield str(request.getfixturevalue("redis_cluster_url")) + "/?model=widecolumn"
    elif request.param == "quorum":  # the quorum cluster: 3 nodes, N=3, QUORUM reads and writes
        yield f"quorum:///{tmp_path / 'quorum'}?nodes=3&n=3"
    else:
        node = request.getfixturevalue("redis_url").removeprefix("redis://").rsplit("/", 1)[0]
        yield f"quorum://{node}/0?n=3&peers={node}/1,{node}/2"
    _api = "async"


async def _open(url: str) -> WideColumnStore:
    store: WideColumnStore = await open_with(_api)(url)
    return store


def run(url: str, body: Body) -> None:
    async def main() -> None:
        store = await _open(url)
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def load_events(s: WideColumnStore) -> None:
    await s.create_table(EVENTS)
    rows = [
        {"user_id": 7, "day": "2024-01-15", "ts": ts, "event_id": eid, "kind": f"{ts}{eid}"}
        for ts in (10, 20, 30, 40)
        for eid in ("a", "b", "c")
    ]
    rows.append({"user_id": 7, "day": "2024-01-16", "ts": 20, "event_id": "a", "kind": "other"})
    rows.append({"user_id": 8, "day": "2024-01-15", "ts": 20, "event_id": "a", "kind": "other"})
    await s.upsert_many("events", rows)


def kinds(rows: list[dict[str, Any]]) -> list[str]:
    return [r["kind"] for r in rows]


# -- the seed -----------------------------------------------------------------------


def test_seed_sensor_readings(wc_url: str) -> None:
    """CREATE TABLE sensor_readings … CLUSTERING ORDER BY (timestamp DESC); SELECT * …
    WHERE sensor_id = 'sensor_001' AND timestamp > '2024-01-15 00:00:00' LIMIT 100."""

    async def body(s: WideColumnStore) -> None:
        await s.create_table(SENSOR_READINGS)
        await s.upsert(
            "sensor_readings",
            {
                "sensor_id": "sensor_001",
                "timestamp": at("2024-01-15 10:30:00"),
                "temperature": 23.5,
                "humidity": 45.2,
            },
        )
        start = at("2024-01-14 12:05:00")
        readings = [
            {
                "sensor_id": sensor,
                "timestamp": start + timedelta(minutes=10 * i),
                "temperature": 20 + i % 7,
                "humidity": 40.0 + i % 11,
            }
            for sensor in ("sensor_001", "sensor_002")
            for i in range(300)  # every 10 minutes from 12:05 on the 14th to 13:55 on the 16th
        ]
        await s.upsert_many("sensor_readings", readings)

        since = at("2024-01-15 00:00:00")
        rows = await s.select(
            "sensor_readings",
            {"sensor_id": "sensor_001"},
            where=[("timestamp", ">", since)],
            limit=100,
        )
        assert len(rows) == 100
        assert {r["sensor_id"] for r in rows} == {"sensor_001"}
        stamps = [r["timestamp"] for r in rows]
        assert stamps == sorted(stamps, reverse=True)  # newest first
        assert all(t > since for t in stamps)
        assert stamps[0] == start + timedelta(minutes=10 * 299)  # the newest reading
        assert set(rows[0]) == {"sensor_id", "timestamp", "temperature", "humidity"}

        everything = await s.select(
            "sensor_readings", {"sensor_id": "sensor_001"}, where=[("timestamp", ">", since)]
        )
        assert len(everything) == 228 + 1  # readings from 00:05 on the 15th, plus 10:30
        assert {"temperature": 23.5, "humidity": 45.2}.items() <= next(
            r for r in everything if r["timestamp"] == at("2024-01-15 10:30:00")
        ).items()
        assert all(r["timestamp"].tzinfo is not None for r in everything)

    run(wc_url, body)


# -- reads --------------------------------------------------------------------------


def test_range_reads(wc_url: str) -> None:
    async def body(s: WideColumnStore) -> None:
        await load_events(s)
        part = {"user_id": 7, "day": "2024-01-15"}
        # declared order: ts ascending, then event_id descending
        assert kinds(await s.select("events", part)) == [
            f"{ts}{e}" for ts in (10, 20, 30, 40) for e in "cba"
        ]
        between = await s.select("events", part, where=[("ts", ">=", 20), ("ts", "<", 40)])
        assert kinds(between) == ["20c", "20b", "20a", "30c", "30b", "30a"]
        assert kinds(await s.select("events", part, where=[("ts", ">", 30)])) == [
            "40c",
            "40b",
            "40a",
        ]
        assert kinds(await s.select("events", part, where=[("ts", "<=", 10)])) == [
            "10c",
            "10b",
            "10a",
        ]
        # equality on the first clustering column, range on the second
        inner = await s.select("events", part, where=[("ts", "=", 20), ("event_id", ">=", "b")])
        assert kinds(inner) == ["20c", "20b"]
        one = await s.select("events", part, where=[("ts", "=", 30), ("event_id", "=", "a")])
        assert kinds(one) == ["30a"]
        assert await s.select("events", part, where=[("ts", ">", 40)]) == []
        assert await s.select("events", part, where=[("ts", ">", 30), ("ts", "<", 20)]) == []
        assert await s.select("events", {"user_id": 9, "day": "2024-01-15"}) == []
        assert kinds(await s.select("events", {"user_id": 8, "day": "2024-01-15"})) == ["other"]

    run(wc_url, body)


def test_order_override_and_limit(wc_url: str) -> None:
    async def body(s: WideColumnStore) -> None:
        await load_events(s)
        part = {"user_id": 7, "day": "2024-01-15"}
        declared = kinds(await s.select("events", part))
        assert kinds(await s.select("events", part, order="asc")) == declared
        # the other direction reverses every clustering column, as CQL's ORDER BY does
        assert kinds(await s.select("events", part, order="desc")) == declared[::-1]
        newest = await s.select("events", part, order="desc", limit=2, where=[("ts", "<", 40)])
        assert kinds(newest) == ["30a", "30b"]
        assert kinds(await s.select("events", part, limit=4)) == declared[:4]

        await s.create_table(SENSOR_READINGS)
        base = at("2024-01-15 00:00:00")
        await s.upsert_many(
            "sensor_readings",
            [
                {"sensor_id": "s", "timestamp": base + timedelta(hours=h), "temperature": h}
                for h in range(5)
            ],
        )
        temps = await s.select("sensor_readings", {"sensor_id": "s"}, columns=["temperature"])
        assert temps == [{"temperature": float(h)} for h in (4, 3, 2, 1, 0)]
        oldest = await s.select(
            "sensor_readings", {"sensor_id": "s"}, order="asc", limit=2, columns=["temperature"]
        )
        assert oldest == [{"temperature": 0.0}, {"temperature": 1.0}]

    run(wc_url, body)


def test_upsert_overwrites_whole_row(wc_url: str) -> None:
    async def body(s: WideColumnStore) -> None:
        await s.create_table(SENSOR_READINGS)
        key = {"sensor_id": "s1", "timestamp": at("2024-01-15 10:00:00")}
        await s.upsert("sensor_readings", {**key, "temperature": 1.0, "humidity": 50.0})
        await s.upsert("sensor_readings", {**key, "temperature": 2.0})
        rows = await s.select("sensor_readings", {"sensor_id": "s1"})
        assert rows == [{**key, "temperature": 2.0, "humidity": None}]

    run(wc_url, body)


def test_types_round_trip(wc_url: str) -> None:
    schema = TableSchema(
        "typed",
        partition_key=("k",),
        clustering=("c",),
        columns={
            "k": "text",
            "c": "int",
            "f": "float",
            "b": "bool",
            "t": "timestamp",
            "blob": "blob",
            "s": "text",
        },
    )
    plus_two = timezone(timedelta(hours=2))

    async def body(s: WideColumnStore) -> None:
        await s.create_table(schema)
        row = {
            "k": "ключ",
            "c": -(2**63),
            "f": 3,
            "b": False,
            "t": datetime(2024, 1, 15, 12, 0, 0, 123456, tzinfo=plus_two),
            "blob": bytearray(b"\x00\xff"),
            "s": "",
        }
        await s.upsert("typed", row)
        await s.upsert("typed", {"k": "ключ", "c": 2**63 - 1, "b": True})
        first, second = await s.select("typed", {"k": "ключ"})
        assert first == {
            "k": "ключ",
            "c": -(2**63),
            "f": 3.0,
            "b": False,
            "t": datetime(2024, 1, 15, 10, 0, 0, 123456, tzinfo=UTC),
            "blob": b"\x00\xff",
            "s": "",
        }
        assert type(first["f"]) is float and type(first["b"]) is bool
        assert first["t"].utcoffset() == timedelta(0)
        assert second == {
            "k": "ключ",
            "c": 2**63 - 1,
            "f": None,
            "b": True,
            "t": None,
            "blob": None,
            "s": None,
        }

    run(wc_url, body)


def test_text_clustering_sorts_by_code_point(wc_url: str) -> None:
    schema = TableSchema(
        "words", partition_key=("p",), clustering=("w",), columns={"p": "int", "w": "text"}
    )
    words = ["b", "B", "a", "é", "z", "ab", "", "Z"]

    async def body(s: WideColumnStore) -> None:
        await s.create_table(schema)
        await s.upsert_many("words", [{"p": 1, "w": w} for w in words])
        rows = await s.select("words", {"p": 1})
        assert [r["w"] for r in rows] == sorted(words)

    run(wc_url, body)


def test_delete_partition_row_and_prefix(wc_url: str) -> None:
    async def body(s: WideColumnStore) -> None:
        await load_events(s)
        part = {"user_id": 7, "day": "2024-01-15"}
        await s.delete("events", part, {"ts": 20, "event_id": "b"})
        assert "20b" not in kinds(await s.select("events", part))
        await s.delete("events", part, {"ts": 30})
        assert kinds(await s.select("events", part, where=[("ts", ">=", 20)])) == [
            "20c",
            "20a",
            "40c",
            "40b",
            "40a",
        ]
        await s.delete("events", part)
        assert await s.select("events", part) == []
        assert kinds(await s.select("events", {"user_id": 7, "day": "2024-01-16"})) == ["other"]
        await s.delete("events", {"user_id": 99, "day": "x"})  # nothing there: fine

    run(wc_url, body)


def test_ttl_hides_then_purges_rows(wc_url: str) -> None:
    async def body(s: WideColumnStore) -> None:
        await s.create_table(SENSOR_READINGS)
        t0 = at("2024-01-15 00:00:00")
        await s.upsert("sensor_readings", {"sensor_id": "s", "timestamp": t0, "temperature": 1})
        await s.upsert(
            "sensor_readings",
            {"sensor_id": "s", "timestamp": t0 + timedelta(seconds=1), "temperature": 2},
            ttl=0.5,
        )
        assert len(await s.select("sensor_readings", {"sensor_id": "s"})) == 2
        deadline = time.monotonic() + 5
        while len(await s.select("sensor_readings", {"sensor_id": "s"})) != 1:
            if time.monotonic() > deadline:  # a bound on waiting, not a speed check
                raise AssertionError("row with a TTL did not expire within 5 s")
            await asyncio.sleep(0.02)
        rows = await s.select("sensor_readings", {"sensor_id": "s"})
        assert rows[0]["temperature"] == 1.0
        assert await s.purge_expired() == 1
        assert await s.purge_expired() == 0
        # an overwrite without a TTL makes a row permanent again
        await s.upsert("sensor_readings", {"sensor_id": "s", "timestamp": t0}, ttl=60)
        await s.upsert("sensor_readings", {"sensor_id": "s", "timestamp": t0})
        assert await s.purge_expired() == 0

    run(wc_url, body)


# -- tables -------------------------------------------------------------------------


def test_schemas_survive_reopen(wc_url: str) -> None:
    async def main() -> None:
        s = await _open(wc_url)
        await s.create_table(SENSOR_READINGS)
        await s.create_table(EVENTS)
        await s.upsert("sensor_readings", {"sensor_id": "x", "timestamp": at("2024-01-15")})
        await s.close()
        s = await _open(wc_url)
        try:
            assert await s.tables() == ["events", "sensor_readings"]
            assert await s.schema("sensor_readings") == SENSOR_READINGS
            assert await s.schema("events") == EVENTS
            rows = await s.select("sensor_readings", {"sensor_id": "x"})
            assert rows[0]["timestamp"] == at("2024-01-15")
            await s.create_table(SENSOR_READINGS)  # same schema: fine
            await s.drop_table("events")
            assert await s.tables() == ["sensor_readings"]
            with pytest.raises(NotFoundError):
                await s.select("events", {"user_id": 1, "day": "d"})
            await s.drop_table("events", if_exists=True)
        finally:
            await s.close()

    asyncio.run(main())


def test_table_conflicts(wc_url: str) -> None:
    async def body(s: WideColumnStore) -> None:
        await s.create_table(SENSOR_READINGS)
        await s.create_table(SENSOR_READINGS, if_not_exists=True)
        with pytest.raises(ConflictError):
            await s.create_table(SENSOR_READINGS, if_not_exists=False)
        other = TableSchema("sensor_readings", ("sensor_id",), columns={"sensor_id": "text"})
        with pytest.raises(ConflictError):
            await s.create_table(other)
        upper = TableSchema("SENSOR_READINGS", ("sensor_id",), columns={"sensor_id": "text"})
        with pytest.raises(ConflictError):
            await s.create_table(upper)
        assert await s.schema("sensor_readings") == SENSOR_READINGS

    run(wc_url, body)


def test_missing_table_is_not_found(wc_url: str) -> None:
    async def body(s: WideColumnStore) -> None:
        for op in [
            s.select("nope", {"k": 1}),
            s.upsert("nope", {"k": 1}),
            s.upsert_many("nope", []),
            s.delete("nope", {"k": 1}),
            s.schema("nope"),
            s.drop_table("nope"),
        ]:
            with pytest.raises(NotFoundError):
                await op

    run(wc_url, body)


# -- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: TableSchema("bad name", ("k",), columns={"k": "text"}),
        lambda: TableSchema("t; DROP TABLE x", ("k",), columns={"k": "text"}),
        lambda: TableSchema('t"', ("k",), columns={"k": "text"}),
        lambda: TableSchema("1t", ("k",), columns={"k": "text"}),
        lambda: TableSchema("t", ("k",), columns={"k": "text", 'v" TEXT); --': "text"}),
        lambda: TableSchema("t", ("k",), columns={"k": "varchar"}),
        lambda: TableSchema("t", (), columns={"k": "text"}),
        lambda: TableSchema("t", ("k",), columns={"x": "text"}),
        lambda: TableSchema("t", ("k",), ("k",), columns={"k": "text"}),
        lambda: TableSchema("t", ("k",), columns={"k": "text", "K": "int"}),
        lambda: TableSchema("t", ("k",), columns={"k": "text", "_ms_expires_at": "int"}),
        lambda: TableSchema("t", ("k",), (ClusteringColumn("c", "up"),), {"k": "int", "c": "int"}),  # type: ignore[arg-type]
    ],
)
def test_invalid_schemas(make: Callable[[], TableSchema]) -> None:
    with pytest.raises(InvalidQueryError):
        make()


def test_invalid_queries_raise_and_change_nothing(wc_url: str) -> None:
    async def body(s: WideColumnStore) -> None:
        await load_events(s)
        part = {"user_id": 7, "day": "2024-01-15"}
        before = await s.select("events", part)
        bad: list[Awaitable[Any]] = [
            s.select("events", {"user_id": 7}),  # half a partition key
            s.select("events", {}),
            s.select("events", {"user_id": 7, "day": "2024-01-15", "ts": 10}),
            s.select("events", {"user_id": "7", "day": "2024-01-15"}),
            s.select("events", part, where=[("kind", "=", "x")]),  # not clustering
            s.select("events", part, where=[("user_id", "=", 7)]),  # partition column
            s.select("events", part, where=[("nope", "=", 1)]),
            s.select("events", part, where=[("ts", "!=", 1)]),
            s.select("events", part, where=[("ts", "LIKE", 1)]),
            s.select("events", part, where=[("event_id", "=", "a")]),  # skips ts
            s.select("events", part, where=[("ts", ">", 1), ("event_id", "=", "a")]),
            s.select("events", part, where=[("ts", "=", 1), ("ts", ">", 0)]),
            s.select("events", part, where=[("ts", ">", 1), ("ts", ">=", 2)]),
            s.select("events", part, where=[("ts", ">", "10")]),  # wrong type
            s.select("events", part, where=[("ts", ">", None)]),
            s.select("events", part, where=[("ts", ">")]),  # type: ignore[list-item]
            s.select("events", part, where="ts > 1"),  # type: ignore[arg-type]
            s.select("events", part, order="newest"),  # type: ignore[arg-type]
            s.select("events", part, limit=0),
            s.select("events", part, limit=True),
            s.select("events", part, columns=["kind", "nope"]),
            s.select("events", part, columns="kind"),
            s.select("ev'ents", part),
            s.delete("events", part, {"event_id": "a"}),  # not a leading run
            s.delete("events", part, {"kind": "x"}),
            s.delete("events", {"user_id": 7}),
        ]
        for op in bad:
            with pytest.raises(InvalidQueryError):
                await op
        assert await s.select("events", part) == before

    run(wc_url, body)


def test_bad_rows_raise_and_leave_data_intact(wc_url: str) -> None:
    async def body(s: WideColumnStore) -> None:
        await s.create_table(SENSOR_READINGS)
        t0 = at("2024-01-15 10:00:00")
        good = {"sensor_id": "s", "timestamp": t0, "temperature": 1.5, "humidity": 2.5}
        await s.upsert("sensor_readings", good)
        bad_rows: list[dict[str, Any]] = [
            {**good, "temperature": "hot"},
            {**good, "temperature": float("nan")},
            {**good, "temperature": float("inf")},
            {**good, "temperature": True},
            {**good, "timestamp": datetime(2024, 1, 15, 10)},  # naive
            {**good, "timestamp": "2024-01-15 10:00:00"},
            {**good, "sensor_id": 1},
            {**good, "sensor_id": "\ud800"},
            {**good, "pressure": 1.0},  # unknown column
            {"timestamp": t0, "temperature": 9.0},  # no partition key
            {"sensor_id": "s", "temperature": 9.0},  # no clustering column
            {**good, "sensor_id": None},
        ]
        for row in bad_rows:
            with pytest.raises(InvalidValueError):
                await s.upsert("sensor_readings", row)
        # one bad row in a batch: nothing of the batch is written
        batch = [
            {**good, "timestamp": t0 + timedelta(minutes=1), "temperature": 7.0},
            {**good, "temperature": 8.0},
            {**good, "timestamp": t0 + timedelta(minutes=2), "humidity": "wet"},
        ]
        with pytest.raises(InvalidValueError):
            await s.upsert_many("sensor_readings", batch)
        for ttl in (0, -1, float("nan"), "10"):
            with pytest.raises(InvalidValueError):
                await s.upsert("sensor_readings", {**good, "temperature": 0.0}, ttl=ttl)  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError):
            await s.upsert("sensor_readings", [good])  # type: ignore[arg-type]
        assert await s.select("sensor_readings", {"sensor_id": "s"}) == [good]

    run(wc_url, body)


def test_injection_attempts_are_stored_as_data(wc_url: str) -> None:
    texts = [
        "'; DROP TABLE wc_sensor_readings; --",
        '" OR 1=1 --',
        "sensor_001' OR '1'='1",
        "$gt",
        "%",
        "*",
        "\x00nul",
    ]

    async def body(s: WideColumnStore) -> None:
        await s.create_table(SENSOR_READINGS)
        t0 = at("2024-01-15 00:00:00")
        await s.upsert("sensor_readings", {"sensor_id": "sensor_001", "timestamp": t0})
        for text in texts:
            await s.upsert("sensor_readings", {"sensor_id": text, "timestamp": t0})
        for text in texts:
            rows = await s.select("sensor_readings", {"sensor_id": text})
            assert [r["sensor_id"] for r in rows] == [text]
        rows = await s.select("sensor_readings", {"sensor_id": "sensor_001"})
        assert len(rows) == 1

    run(wc_url, body)


def test_limit_and_ttl_beyond_range_are_invalid_values(wc_url: str) -> None:
    async def body(s: WideColumnStore) -> None:
        await s.create_table(EVENTS)
        row = {"user_id": 1, "day": "d", "ts": 1, "event_id": "e", "kind": "k"}
        with pytest.raises(InvalidValueError, match="limit"):
            await s.select("events", {"user_id": 1, "day": "d"}, limit=2**63)
        with pytest.raises(InvalidValueError, match="ttl"):
            await s.upsert("events", row, ttl=10**400)
        with pytest.raises(InvalidValueError, match="ttl"):
            await s.upsert_many("events", [row], ttl=1e300)
        assert await s.select("events", {"user_id": 1, "day": "d"}) == []

    run(wc_url, body)
