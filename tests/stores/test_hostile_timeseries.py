"""Hostile input against every time-series backend (see ``tests/stores/hostile.py``).

Measurement names, tag keys and values, field keys and values (64-bit edges, NaN,
lone surrogates, InfluxQL and SQL fragments), times at and past the storable range,
naive times, windows, aggregate names, group-bys, limits and retention bounds; every
operation is accepted (every point of a batch reads back) or refused with a
``MultistoreError`` and changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from multistore.stores import open_store
from multistore.stores.timeseries import Point, TimeSeriesStore
from tests.stores.hostile import (
    Op,
    anything,
    drive,
    integers,
    mostly,
    numbers,
    plain_text,
    scalars,
    texts,
)

FAR_PAST, FAR_FUTURE = datetime(1678, 1, 1, tzinfo=UTC), datetime(2262, 1, 1, tzinfo=UTC)
T0 = datetime(2024, 1, 15, tzinfo=UTC)
names = mostly(st.sampled_from(["cpu", "mem", "canary"]), texts)
tag_values = mostly(st.sampled_from(["a", "b", "é x"]) | plain_text, st.one_of(texts, scalars))
tags = mostly(
    st.dictionaries(st.sampled_from(["host", "dc"]), tag_values, max_size=2),
    st.one_of(st.dictionaries(texts, tag_values, max_size=2), anything),
)
field_values = mostly(
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False).map(float),
        st.integers(-(2**63), 2**63 - 1),
    ),
    st.one_of(numbers, scalars),
)
fields = mostly(
    st.dictionaries(st.sampled_from(["v", "w"]), field_values, min_size=1, max_size=2),
    st.one_of(st.dictionaries(texts, field_values, max_size=2), anything),
)
times = mostly(
    st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.one_of(st.datetimes(), st.datetimes(timezones=st.timezones()), scalars),
)
windows = mostly(
    st.sampled_from([timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)]),
    st.one_of(st.timedeltas(), anything),
)
FUNCTIONS = ["mean", "min", "max", "sum", "count", "median", "p50", "p99.9"]
functions = mostly(
    st.sampled_from(FUNCTIONS),
    st.one_of(texts, st.sampled_from(["p0", "p101", "p٩٥", "p1e2"]), anything),
)


@pytest.fixture(params=["duckdb", pytest.param("influxdb", marks=pytest.mark.server)])
def ts_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'metrics.duckdb'}"
    return str(request.getfixturevalue("influxdb_url"))


async def snapshot(store: TimeSeriesStore) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name in await store.measurements():
        points = await store.query(name, start=FAR_PAST, end=FAR_FUTURE)
        state[name] = sorted(
            repr((p.time, sorted(p.tags.items()), sorted(p.fields.items()))) for p in points
        )
    return state


async def _write(store: TimeSeriesStore, specs: Any) -> list[Point]:
    """Build the points inside the operation (building checks them), then write."""
    if not isinstance(specs, list) or not all(isinstance(x, tuple) and len(x) == 4 for x in specs):
        await store.write_many(specs)  # not points at all: refused
        return []
    points = [Point(*spec) for spec in specs]
    await store.write_many(points)
    return points


async def _all_there(store: TimeSeriesStore, points: list[Point]) -> None:
    for point in points:
        found = await store.query(
            point.measurement,
            start=point.time,
            end=point.time + timedelta(microseconds=1),
            tags=point.tags,
        )
        assert any(p.fields.items() >= point.fields.items() for p in found), (point, found)


@st.composite
def ops(draw: st.DrawFn) -> Op[TimeSeriesStore]:
    kind = draw(
        st.sampled_from(["write", "write", "query", "aggregate", "retention", "drop", "downsample"])
    )
    name = draw(names)
    if kind == "write":
        specs = draw(
            mostly(
                st.lists(st.tuples(names, tags, fields, times), min_size=1, max_size=3), anything
            )
        )
        return Op(kind, lambda s: _write(s, specs), _all_there, (specs,))
    start, end = draw(times), draw(mostly(st.just(FAR_FUTURE), times))
    if kind == "query":
        flds = draw(mostly(st.none() | st.lists(st.sampled_from(["v", "w"]), min_size=1), anything))
        limit = draw(mostly(st.none() | st.integers(1, 5), st.one_of(integers, anything)))
        match = draw(mostly(st.none() | st.fixed_dictionaries({"host": tag_values}), tags))
        return Op(
            kind,
            lambda s: s.query(name, start=start, end=end, tags=match, fields=flds, limit=limit),
            None,
            (name, start, end, match, flds, limit),
        )
    if kind in ("aggregate", "downsample"):
        field = draw(mostly(st.sampled_from(["v", "w"]), texts))
        fn, every = draw(functions), draw(windows)
        group_by = draw(mostly(st.none() | st.just(["host"]), st.one_of(st.lists(texts), anything)))
        if kind == "aggregate":
            return Op(
                kind,
                lambda s: s.aggregate(
                    name, field, fn=fn, every=every, start=start, end=end, group_by=group_by
                ),
                None,
                (name, field, fn, every, start, end, group_by),
            )
        target = draw(mostly(st.just("rollup"), texts))
        return Op(
            kind,
            lambda s: s.downsample(name, target, field, fn=fn, every=every, start=start, end=end),
            None,
            (name, target, field, fn, every, start, end),
        )
    if kind == "retention":
        older = draw(
            mostly(st.just(timedelta(days=365 * 200)), st.one_of(st.timedeltas(), times, anything))
        )
        return Op(kind, lambda s: s.retention(older, name), None, (older, name))
    gone = draw(mostly(st.just("mem"), texts))
    return Op(kind, lambda s: s.drop_measurement(gone), None, (gone,))


def test_hostile_timeseries(ts_url: str) -> None:
    async def factory() -> TimeSeriesStore:
        store = await open_store(ts_url, model="timeseries")
        assert isinstance(store, TimeSeriesStore)
        return store

    async def prepare(store: TimeSeriesStore) -> None:
        await store.write_many(
            [
                Point("canary", {"host": "a"}, {"v": 1.5, "w": 2}, T0),
                Point("cpu", {"host": "a"}, {"v": 0.5, "w": 1}, T0),
            ]
        )

    stats = drive(factory, ops(), snapshot, prepare=prepare)
    assert stats.accepted and stats.refused
