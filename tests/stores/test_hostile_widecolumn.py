"""Hostile input against every wide-column backend (see ``tests/stores/hostile.py``).

Table schemas, rows (values of the wrong type, 64-bit edges, NaN, naive timestamps,
lone surrogates), partitions, clustering conditions, orders, limits, column lists and
TTLs; every operation is accepted (a row reads back, a batch lands whole) or refused
with a ``MultistoreError`` and changes nothing.
"""

from __future__ import annotations

import collections
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from multistore.stores import open_store
from multistore.stores.widecolumn import ClusteringColumn, TableSchema, WideColumnStore
from tests.stores.hostile import (
    Op,
    anything,
    drive,
    integers,
    mostly,
    numbers,
    scalars,
    texts,
)

EVENTS = TableSchema(
    "events",
    partition_key=("p",),
    clustering=(ClusteringColumn("c", "asc"), ClusteringColumn("t", "desc")),
    columns={"p": "text", "c": "int", "t": "timestamp", "v": "float", "b": "blob", "ok": "bool"},
)
PARTITIONS = ["a", "b", "canary"]
#: Partitions drawn lately: the snapshot reads these too, so a refused operation on a
#: partition of its own would be caught writing there.
recent: collections.deque[Any] = collections.deque(maxlen=6)


def _partition(value: Any) -> Any:
    recent.append(value)
    return value


partitions = mostly(st.sampled_from(PARTITIONS), st.one_of(texts, scalars)).map(_partition)
stamps = mostly(
    st.datetimes(datetime(1970, 1, 1), datetime(2200, 1, 1), timezones=st.just(UTC)),
    st.one_of(st.datetimes(), scalars),
)
rows = st.fixed_dictionaries(
    {
        "p": partitions,
        "c": mostly(st.integers(-(2**63), 2**63 - 1), st.one_of(integers, scalars)),
        "t": stamps,
        "v": mostly(st.none() | st.floats(allow_nan=False, allow_infinity=False), scalars),
        "b": mostly(st.none() | st.binary(max_size=8), scalars),
        "ok": mostly(st.none() | st.booleans(), scalars),
    }
)
#: TTLs that are refused, or long enough not to expire during a run.
ttls = mostly(
    st.none() | st.floats(60, 1e9),
    st.one_of(numbers, anything).filter(lambda x: not (isinstance(x, int | float) and 0 < x < 60)),
)
operators = mostly(st.sampled_from(["=", "<", "<=", ">", ">="]), texts)
conditions = st.lists(
    st.tuples(
        mostly(st.sampled_from(["c", "t"]), texts), operators, st.one_of(integers, stamps, scalars)
    ),
    max_size=2,
)


@pytest.fixture(params=["sqlite", "quorum", pytest.param("quorum-redis", marks=pytest.mark.server)])
def wc_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'wc.db'}?model=widecolumn"
    if request.param == "quorum":
        return f"quorum:///{tmp_path / 'quorum'}?nodes=3&n=3"
    node = request.getfixturevalue("redis_url").removeprefix("redis://").rsplit("/", 1)[0]
    return f"quorum://{node}/0?n=3&peers={node}/1,{node}/2"


async def snapshot(store: WideColumnStore) -> Any:
    state: dict[str, Any] = {"tables": await store.tables()}
    if "events" in state["tables"]:
        for p in {*PARTITIONS, *(r for r in recent if isinstance(r, str))}:
            try:
                state[p] = await store.select("events", {"p": p})
            except Exception as exc:  # a partition value the store refuses to read
                state[p] = type(exc).__name__
    return state


def _there(*batch: dict[str, Any]) -> Any:
    async def verify(store: WideColumnStore, _: Any) -> None:
        for row in batch:
            found = await store.select(
                "events", {"p": row["p"]}, where=[("c", "=", row["c"]), ("t", "=", row["t"])]
            )
            # A float column takes an int and keeps it as a float (the nearest one).
            expected = None if row["v"] is None else float(row["v"])
            assert len(found) == 1 and found[0]["v"] == expected, (row, found)

    return verify


@st.composite
def ops(draw: st.DrawFn) -> Op[WideColumnStore]:
    kind = draw(
        st.sampled_from(
            ["upsert", "upsert", "upsert_many", "select", "delete", "create_table", "schema"]
        )
    )
    if kind == "upsert":
        row, ttl = draw(mostly(rows, anything)), draw(ttls)
        return Op(
            kind,
            lambda s: s.upsert("events", row, ttl=ttl),
            _there(row) if ttl is None and isinstance(row, dict) else None,
            (row, ttl),
        )
    if kind == "upsert_many":
        batch, ttl = draw(mostly(st.lists(rows, max_size=4), anything)), draw(ttls)
        return Op(
            kind,
            lambda s: s.upsert_many("events", batch, ttl=ttl),
            _there(*batch) if ttl is None and isinstance(batch, list) else None,
            (batch, ttl),
        )
    table = draw(mostly(st.just("events"), texts))
    if kind == "select":
        part = draw(
            mostly(
                st.fixed_dictionaries({"p": partitions}),
                st.one_of(anything, st.dictionaries(texts, scalars)),
            )
        )
        where, order = (
            draw(mostly(conditions, anything)),
            draw(mostly(st.sampled_from([None, "asc", "desc"]), texts)),
        )
        limit = draw(mostly(st.none() | st.integers(1, 10), st.one_of(integers, anything)))
        columns = draw(
            mostly(
                st.none() | st.lists(st.sampled_from(["p", "c", "v"]), min_size=1),
                st.one_of(st.lists(texts), anything),
            )
        )
        return Op(
            kind,
            lambda s: s.select(table, part, where=where, order=order, limit=limit, columns=columns),
            None,
            (table, part, where, order, limit, columns),
        )
    if kind == "delete":
        part = draw(mostly(st.fixed_dictionaries({"p": partitions}), anything))
        clustering = draw(
            mostly(
                st.none() | st.fixed_dictionaries({"c": st.integers(-3, 3)}),
                st.one_of(st.dictionaries(texts, scalars), anything),
            )
        )
        return Op(
            kind, lambda s: s.delete(table, part, clustering), None, (table, part, clustering)
        )
    if kind == "create_table":
        columns = draw(
            st.dictionaries(
                mostly(st.sampled_from(["p", "c", "x"]), texts),
                mostly(st.sampled_from(["text", "int"]), texts),
                max_size=3,
            )
        )

        async def create(store: WideColumnStore) -> None:
            await store.create_table(TableSchema(table, partition_key=("p",), columns=columns))

        return Op(kind, create, None, (table, columns))
    return Op(kind, lambda s: s.schema(table), None, (table,))


def test_hostile_widecolumn(wc_url: str) -> None:
    async def factory() -> WideColumnStore:
        store = await open_store(wc_url)
        assert isinstance(store, WideColumnStore)
        return store

    async def prepare(store: WideColumnStore) -> None:
        await store.create_table(EVENTS)
        stamp = datetime(2024, 1, 1, tzinfo=UTC)
        await store.upsert(
            "events", {"p": "canary", "c": 1, "t": stamp, "v": 1.5, "b": b"\x00", "ok": True}
        )

    stats = drive(factory, ops(), snapshot, prepare=prepare)
    assert stats.accepted and stats.refused
