"""Time-series single-point operations: multistore vs the raw driver doing the same thing.

- DuckDB: ``write`` of one new point (validation, the field-type check against the
  cached catalog, one INSERT into the narrow values table) through
  :class:`DuckDBTimeSeriesStore` on its worker thread, against a plain ``duckdb``
  ``INSERT`` of one row into an (endpoint, status, time, response_time) table on the
  event-loop thread; ``query`` of a 10-point range out of 2,000 points against the same
  range ``SELECT`` on the plain table.
- InfluxDB: the same two operations against a bare ``influxdb.InfluxDBClient``
  (``write_points`` of one point; an InfluxQL ``SELECT`` of the range), both blocking
  HTTP on the same server; ours runs the client on a worker thread.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
from influxdb import InfluxDBClient

from benchmarks._harness import BenchEnv, Row, compare
from multistore.stores import open_store
from multistore.stores.timeseries import Point, TimeSeriesStore
from multistore.urls import parse_url

T0 = datetime(2024, 1, 15, tzinfo=UTC)
SEEDED = 2_000
RANGE_START = T0 + timedelta(seconds=1_000)
RANGE_END = RANGE_START + timedelta(seconds=10)


async def _open(url: str) -> TimeSeriesStore:
    store = await open_store(url, model="timeseries")
    assert isinstance(store, TimeSeriesStore)
    return store


def _point(i: int) -> Point:
    return Point(
        "http_requests",
        {"endpoint": "/api/users", "status": "200"},
        {"response_time": 45.2},
        T0 + timedelta(seconds=i),
    )


async def _seed(store: TimeSeriesStore) -> None:
    await store.write_many(_point(i) for i in range(SEEDED))


async def _duckdb_cases(env: BenchEnv) -> list[Row]:
    store = await _open(f"duckdb:///{env.tmp / 'ts-ours.duckdb'}")
    raw = duckdb.connect(str(env.tmp / "ts-raw.duckdb"))
    raw.execute(
        "CREATE TABLE http_requests (endpoint VARCHAR, status VARCHAR, time TIMESTAMP, "
        "response_time DOUBLE)"
    )
    try:
        await _seed(store)
        raw.executemany(
            "INSERT INTO http_requests VALUES ('/api/users', '200', ?, 45.2)",
            [[(T0 + timedelta(seconds=i)).replace(tzinfo=None)] for i in range(SEEDED)],
        )
        ours_next = itertools.count(SEEDED)
        raw_next = itertools.count(SEEDED)

        def raw_write() -> None:
            when = (T0 + timedelta(seconds=next(raw_next))).replace(tzinfo=None)
            raw.execute("INSERT INTO http_requests VALUES ('/api/users', '200', ?, 45.2)", [when])

        def raw_query() -> list[Any]:
            return raw.execute(
                "SELECT endpoint, status, time, response_time FROM http_requests "
                "WHERE time >= ? AND time < ? ORDER BY time",
                [RANGE_START.replace(tzinfo=None), RANGE_END.replace(tzinfo=None)],
            ).fetchall()

        return [
            await compare(
                "timeseries write one point, duckdb",
                lambda: store.write(_point(next(ours_next))),
                raw_write,
                "duckdb INSERT",
            ),
            await compare(
                "timeseries query 10 points, duckdb",
                lambda: store.query("http_requests", start=RANGE_START, end=RANGE_END),
                raw_query,
                "duckdb SELECT range",
            ),
        ]
    finally:
        await store.close()
        raw.close()


async def _influxdb_cases(env: BenchEnv) -> list[Row]:
    url = await env.url("influxdb")
    parsed = parse_url(url)
    store = await _open(url)
    raw = InfluxDBClient(host=parsed.host, port=parsed.port, database=parsed.database)
    try:
        await _seed(store)
        ours_next = itertools.count(SEEDED)
        raw_next = itertools.count(SEEDED)
        start_ns = int(RANGE_START.timestamp()) * 10**9
        end_ns = int(RANGE_END.timestamp()) * 10**9

        def raw_write() -> None:
            raw.write_points(
                [
                    {
                        "measurement": "http_requests_raw",
                        "tags": {"endpoint": "/api/users", "status": "200"},
                        "fields": {"response_time": 45.2},
                        "time": T0 + timedelta(seconds=next(raw_next)),
                    }
                ]
            )

        def raw_query() -> list[dict[str, Any]]:
            result = raw.query(
                f'SELECT * FROM "http_requests" WHERE time >= {start_ns} AND time < {end_ns}',
                epoch="u",
            )
            return list(result.get_points())

        return [
            await compare(
                "timeseries write one point, influxdb",
                lambda: store.write(_point(next(ours_next))),
                raw_write,
                "influxdb client write_points",
                ops=100,
            ),
            await compare(
                "timeseries query 10 points, influxdb",
                lambda: store.query("http_requests", start=RANGE_START, end=RANGE_END),
                raw_query,
                "influxdb client SELECT range",
                ops=100,
            ),
        ]
    finally:
        await store.close()
        raw.close()


async def cases(env: BenchEnv) -> list[Row]:
    return [*await _duckdb_cases(env), *await _influxdb_cases(env)]
