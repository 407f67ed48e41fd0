"""InfluxDB-specific tests of the time-series model: the server going away and coming
back, database creation, what the 1.x line protocol can carry, and PERCENTILE checked
against the real server (and against the DuckDB backend on the same data)."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from influxdb import InfluxDBClient

from multistore.errors import (
    InvalidURLError,
    InvalidValueError,
    NotFoundError,
    Outcome,
    StoreUnavailableError,
)
from multistore.lab.servers import InfluxDBServer, free_port, unique_name
from multistore.stores import open_store
from multistore.stores.timeseries import Point, TimeSeriesStore
from multistore.stores.timeseries._influxdb import InfluxDBTimeSeriesStore
from multistore.stores.timeseries._influxql import ident, line
from multistore.stores.timeseries._points import check_name

pytestmark = pytest.mark.server

T0 = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)
FAR_PAST = datetime(1700, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(2200, 1, 1, tzinfo=UTC)


async def _open(url: str) -> TimeSeriesStore:
    store = await open_store(url, model="timeseries")
    assert isinstance(store, TimeSeriesStore)
    return store


def raw_client(server: InfluxDBServer, database: str) -> InfluxDBClient:
    return InfluxDBClient(host=server.host, port=server.port, database=database, timeout=5)


def test_native_is_the_client_and_the_url_needs_a_database(influxdb_url: str) -> None:
    async def main() -> None:
        store = await _open(influxdb_url)
        try:
            assert isinstance(store, InfluxDBTimeSeriesStore)
            assert isinstance(store.native, InfluxDBClient)
            await store.write(Point("m", {}, {"v": 1.0}, T0))
            rows = store.native.query('SELECT count("v") FROM "m"').raw["series"][0]["values"]
            assert rows[0][1] == 1
        finally:
            await store.close()
        await store.close()  # twice is fine
        with pytest.raises(InvalidURLError, match="database"):
            await _open(influxdb_url.rsplit("/", 1)[0])

    asyncio.run(main())


def test_closed_port_is_unavailable_at_once() -> None:
    async def main() -> None:
        with pytest.raises(StoreUnavailableError, match="refused") as info:
            await _open(f"influxdb://127.0.0.1:{free_port()}/db?timeout=1")
        assert info.value.outcome is Outcome.DEFINITE

    asyncio.run(main())


def test_server_down_then_restarted_same_store_works(influxdb_server: InfluxDBServer) -> None:
    url = influxdb_server.create_database()

    async def main() -> None:
        store = await _open(url + "?timeout=2")
        try:
            await store.write(Point("cpu", {"h": "a"}, {"v": 1.0}, T0))
            influxdb_server.stop()
            try:
                with pytest.raises(StoreUnavailableError) as info:
                    await store.write(Point("cpu", {"h": "a"}, {"v": 2.0}, T0 + timedelta(1)))
                assert info.value.outcome is Outcome.DEFINITE  # refused: nothing was sent
                with pytest.raises(StoreUnavailableError):
                    await store.query("cpu", start=FAR_PAST, end=FAR_FUTURE)
                with pytest.raises(StoreUnavailableError):
                    await store.measurements()
            finally:
                influxdb_server.start()
            await store.write(Point("cpu", {"h": "a"}, {"v": 3.0}, T0 + timedelta(2)))
            got = await store.query("cpu", start=FAR_PAST, end=FAR_FUTURE)
            assert [p.fields["v"] for p in got] == [1.0, 3.0]
            with pytest.raises(InvalidValueError):  # the field types are still known
                await store.write(Point("cpu", {"h": "a"}, {"v": "x"}, T0))
        finally:
            await store.close()

    asyncio.run(main())


def test_database_is_created_on_first_write_unless_create_false(
    influxdb_server: InfluxDBServer,
) -> None:
    port = influxdb_server.port

    async def main() -> None:
        name = unique_name("newdb")
        store = await _open(f"influxdb://127.0.0.1:{port}/{name}")
        try:
            assert await store.measurements() == []  # a missing database reads as empty
            with pytest.raises(NotFoundError, match="m"):
                await store.query("m", start=FAR_PAST, end=FAR_FUTURE)
            await store.write(Point("m", {}, {"v": 1.0}, T0))
            assert await store.measurements() == ["m"]
        finally:
            await store.close()
        with raw_client(influxdb_server, name) as client:
            assert name in {d["name"] for d in client.get_list_database()}

        other = unique_name("nodb")
        store = await _open(f"influxdb://127.0.0.1:{port}/{other}?create=false")
        try:
            with pytest.raises(NotFoundError, match=other):
                await store.write(Point("m", {}, {"v": 1.0}, T0))
        finally:
            await store.close()
        with raw_client(influxdb_server, name) as client:
            assert other not in {d["name"] for d in client.get_list_database()}

    asyncio.run(main())


def test_type_conflict_from_another_writer_is_an_invalid_value(
    influxdb_server: InfluxDBServer,
) -> None:
    """The type cache can be stale when another client drops and rewrites a measurement;
    the server's 400 is then an InvalidValueError whose outcome is indeterminate."""
    url = influxdb_server.create_database()
    database = url.rsplit("/", 1)[1]

    async def main() -> None:
        store = await _open(url)
        try:
            await store.write(Point("m", {}, {"v": 1.0}, T0))
            with raw_client(influxdb_server, database) as raw:
                raw.query('DROP MEASUREMENT "m"', method="POST")
                at = int(T0.timestamp()) * 10**9  # the same shard: InfluxDB types per shard
                raw.write([f'm v="now text" {at}'], params={"db": database}, protocol="line")
            with pytest.raises(InvalidValueError, match="conflict") as info:
                await store.write(Point("m", {}, {"v": 2.0}, T0))
            assert info.value.outcome is Outcome.INDETERMINATE
        finally:
            await store.close()

    asyncio.run(main())


# -- what line protocol can carry --------------------------------------------------------


def test_line_protocol_encoding() -> None:
    point = Point(
        "my meas,x",
        {"b k": "v=1", "a": 'q"\\x'},
        {"f,1": 1.5, "n": -3, "ok": True, "s": 'say "hi" \\ bye'},
        T0,
    )
    assert line(point) == (
        'my\\ meas\\,x,a=q"\\x,b\\ k=v\\=1 '
        'f\\,1=1.5,n=-3i,ok=true,s="say \\"hi\\" \\\\ bye" 1705312800000000'
    )
    assert ident('we"ird\\name') == '"we\\"ird\\\\name"'


def test_every_name_the_checks_accept_roundtrips_and_the_rest_is_refused(
    influxdb_url: str,
) -> None:
    """All strings of up to three characters over the troublesome alphabet: those that
    check_name accepts come back unchanged as measurement, tag key, tag value and field
    key; the others are refused before anything is sent."""
    alphabet = ["a", "\\", ",", " ", "=", '"', "'"]
    names = ["".join(p) for n in (1, 2, 3) for p in itertools.product(alphabet, repeat=n)]
    accepted = []
    for name in names:
        try:
            check_name(name, "name")
        except InvalidValueError:
            with pytest.raises(InvalidValueError, match="backslash"):
                Point("m", {"t": name}, {"v": 1.0}, T0)
            continue
        accepted.append(name)
    assert 250 < len(accepted) < len(names)

    async def main() -> None:
        store = await _open(influxdb_url)
        try:
            points = [
                Point(f"M{name}", {"t": name, f"k{name}": "x"}, {f"f{name}": i}, T0)
                for i, name in enumerate(accepted)
            ]
            await store.write_many(points)
            assert await store.measurements() == sorted(f"M{name}" for name in accepted)
            for i, name in enumerate(accepted):
                [got] = await store.query(
                    f"M{name}", start=T0, end=FAR_FUTURE, tags={"t": name}, fields=[f"f{name}"]
                )
                assert (got.tags, got.fields) == ({"t": name, f"k{name}": "x"}, {f"f{name}": i})
        finally:
            await store.close()

    asyncio.run(main())


# -- PERCENTILE and the other aggregates, checked against the server itself ------------------


def test_percentile_rule_matches_the_server_and_duckdb(
    influxdb_server: InfluxDBServer, tmp_path: Path
) -> None:
    """InfluxDB's own PERCENTILE (queried raw) on many window sizes and ranks equals the
    nearest-rank rule written out in Python, and both backends return it."""
    url = influxdb_server.create_database()
    database = url.rsplit("/", 1)[1]
    rng = random.Random(17)
    points = []
    for i in range(600):
        value = rng.choice([rng.uniform(-50, 50), float(rng.randrange(10))])  # with ties
        points.append(Point("lat", {}, {"v": value}, T0 + timedelta(seconds=i * 3)))
    percentiles = [0.5, 1, 5, 10, 25, 33.3, 50, 66.6, 75, 90, 95, 99, 99.9, 100]
    windows = [timedelta(seconds=s) for s in (6, 9, 30, 100, 600, 1800)]

    def raw_percentiles(pct: float, every: timedelta) -> dict[datetime, float]:
        with raw_client(influxdb_server, database) as client:
            query = (
                f'SELECT percentile("v", {pct}), count("v") FROM "lat" '
                f"WHERE time >= {int(T0.timestamp()) * 10**9} AND time < "
                f"{int((T0 + timedelta(hours=1)).timestamp()) * 10**9} "
                f"GROUP BY time({int(every.total_seconds())}s) fill(none)"
            )
            raw: dict[str, Any] = client.query(query, epoch="u").raw
        out = {}
        for time_us, value, _count in raw["series"][0]["values"]:
            if value is not None:
                out[datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_us)] = value
        return out

    def python_rule(pct: float, every: timedelta) -> dict[datetime, float]:
        buckets: dict[datetime, list[float]] = {}
        step = int(every.total_seconds())
        for p in points:
            ts = int(p.time.timestamp())
            key = datetime.fromtimestamp(ts - ts % step, UTC)
            value = p.fields["v"]
            assert isinstance(value, float)
            buckets.setdefault(key, []).append(value)
        out = {}
        for key, values in buckets.items():
            values.sort()
            rank = int(len(values) * pct / 100 + 0.5)  # floor, values are >= 0
            if 1 <= rank <= len(values):
                out[key] = values[rank - 1]
        return out

    async def main() -> None:
        stores = [
            await _open(url),
            await _open(f"duckdb:///{tmp_path / 'lat.duckdb'}"),
        ]
        try:
            for store in stores:
                await store.write_many(points)
            for pct, every in itertools.product(percentiles, windows):
                server = raw_percentiles(pct, every)
                assert server == python_rule(pct, every), (pct, every)
                for store in stores:
                    got = await store.aggregate(
                        "lat",
                        "v",
                        fn=f"p{pct:g}",
                        every=every,
                        start=T0,
                        end=T0 + timedelta(hours=1),
                    )
                    assert {w.start: w.value for w in got} == server, (store.backend, pct, every)
        finally:
            for store in stores:
                await store.close()

    asyncio.run(main())


def test_both_backends_give_identical_answers(influxdb_url: str, tmp_path: Path) -> None:
    """The same data in both backends: every function, grouped and not, agrees (exactly,
    except the float rounding of mean and sum)."""
    rng = random.Random(23)
    points = []
    for _ in range(500):
        tags = {"host": f"h{rng.randrange(4)}", "dc": rng.choice(["e", "w"])}
        fields: dict[str, float | int | bool | str] = {
            "f": rng.uniform(0, 100),
            "i": rng.randrange(-(10**6), 10**6),
            "s": rng.choice(["x", "y"]),
        }
        points.append(Point("mix", tags, fields, T0 + timedelta(milliseconds=rng.randrange(10**7))))

    async def main() -> None:
        influx = await _open(influxdb_url)
        duck = await _open(f"duckdb:///{tmp_path / 'mix.duckdb'}")
        try:
            for store in (influx, duck):
                await store.write_many(points)
            end = T0 + timedelta(hours=3)
            for field, fn in itertools.product(
                ("f", "i"), ("mean", "min", "max", "sum", "count", "median", "p95", "p10")
            ):
                for every, group_by in (
                    (timedelta(minutes=7), ["host"]),
                    (timedelta(hours=1), None),
                ):
                    args: dict[str, Any] = {
                        "fn": fn,
                        "every": every,
                        "start": T0,
                        "end": end,
                        "group_by": group_by,
                    }
                    a = await influx.aggregate("mix", field, **args)
                    b = await duck.aggregate("mix", field, **args)
                    assert [(w.start, w.tags) for w in a] == [(w.start, w.tags) for w in b]
                    for x, y in zip(a, b, strict=True):
                        if fn in ("mean", "sum") and field == "f":
                            assert x.value == pytest.approx(y.value, rel=1e-12)
                        else:
                            assert x.value == y.value, (field, fn, every)
            count_a = await influx.aggregate(
                "mix", "s", fn="count", every=end - T0, start=T0, end=end
            )
            count_b = await duck.aggregate(
                "mix", "s", fn="count", every=end - T0, start=T0, end=end
            )
            assert count_a == count_b
            for kwargs in ({}, {"tags": {"dc": "e"}, "limit": 17}, {"fields": ["s", "i"]}):
                qa = await influx.query("mix", start=T0, end=end, **kwargs)  # type: ignore[arg-type]
                qb = await duck.query("mix", start=T0, end=end, **kwargs)  # type: ignore[arg-type]
                assert qa == qb
            assert json.dumps(await influx.measurements()) == json.dumps(await duck.measurements())
        finally:
            await influx.close()
            await duck.close()

    asyncio.run(main())
