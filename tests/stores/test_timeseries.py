"""The time-series conformance suite: every test runs against every backend.

Backends: DuckDB (a file under tmp_path; through the async and the sync API,
:mod:`tests.stores.apis`) and InfluxDB 1.x (a real throwaway server, a fresh database
per test). Each test opens its own store inside ``asyncio.run``.
Expected values are computed here, in Python, from the generated data.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multistore.errors import InvalidQueryError, InvalidValueError, NotFoundError
from multistore.stores.timeseries import Point, TimeSeriesStore, Window
from tests.stores.apis import open_with

Body = Callable[[TimeSeriesStore], Awaitable[None]]
T0 = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)
FAR_PAST = datetime(1700, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(2200, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
_EXAMPLES = itertools.count()


_api = "async"  # the API that _open uses, set by the fixture below


@pytest.fixture(
    params=["duckdb", "duckdb-sync", pytest.param("influxdb", marks=pytest.mark.server)]
)
def ts_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    global _api
    _api = "sync" if request.param == "duckdb-sync" else "async"
    if request.param.startswith("duckdb"):
        yield f"duckdb:///{tmp_path / 'metrics.duckdb'}"
    else:
        yield str(request.getfixturevalue("influxdb_url"))
    _api = "async"


async def _open(url: str) -> TimeSeriesStore:
    store: TimeSeriesStore = await open_with(_api)(url, model="timeseries")
    return store


def run(url: str, body: Body) -> None:
    """Open the store at ``url``, run ``body(store)`` and close it, on one event loop."""

    async def main() -> None:
        store = await _open(url)
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


async def everything(store: TimeSeriesStore, measurement: str) -> list[Point]:
    return await store.query(measurement, start=FAR_PAST, end=FAR_FUTURE)


async def snapshot(store: TimeSeriesStore) -> dict[str, list[Point]]:
    """Every stored point, by measurement, to prove that a failed call changed nothing."""
    return {m: await everything(store, m) for m in await store.measurements()}


def floor_window(when: datetime, every: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    us = (when - epoch) // US
    step = every // US
    return epoch + timedelta(microseconds=us - us % step)


def nearest_rank(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile, written out independently of the library."""
    ordered = sorted(values)
    rank = math.floor(len(ordered) * pct / 100.0 + 0.5)
    if rank < 1 or rank > len(ordered):
        return None
    return float(ordered[rank - 1])


def reference(fn: str, values: list[float]) -> float | None:
    if fn == "mean":
        return sum(values) / len(values)
    if fn == "min":
        return float(min(values))
    if fn == "max":
        return float(max(values))
    if fn == "sum":
        return float(sum(values))
    if fn == "count":
        return float(len(values))
    if fn == "median":
        ordered = sorted(values)
        n = len(ordered)
        if n % 2:
            return float(ordered[n // 2])
        lo, hi = ordered[n // 2 - 1], ordered[n // 2]
        return float(lo) + float(hi - lo) / 2
    assert fn.startswith("p")
    return nearest_rank(values, float(fn[1:]))


def expected_windows(
    points: Iterable[Point],
    field: str,
    fn: str,
    every: timedelta,
    start: datetime,
    end: datetime,
    match: dict[str, str] | None = None,
    group_by: list[str] | None = None,
) -> list[tuple[datetime, float, dict[str, str]]]:
    buckets: dict[tuple[datetime, tuple[tuple[str, str], ...]], list[float]] = defaultdict(list)
    for p in points:
        if not start <= p.time < end or field not in p.fields:
            continue
        if match and any(p.tags.get(k) != v for k, v in match.items()):
            continue
        group = tuple(sorted((k, p.tags[k]) for k in group_by or [] if k in p.tags))
        value = p.fields[field]
        assert isinstance(value, int | float)
        buckets[(floor_window(p.time, every), group)].append(value)
    out = []
    for (window, group), values in sorted(buckets.items()):
        value = reference(fn, values)
        if value is not None:
            out.append((window, value, dict(group)))
    return out


def assert_windows(
    got: list[Window], want: list[tuple[datetime, float, dict[str, str]]], *, exact: bool
) -> None:
    assert [(w.start, w.tags) for w in got] == [(s, t) for s, _, t in want]
    for window, (_, value, _) in zip(got, want, strict=True):
        assert isinstance(window.value, float)
        if exact:
            assert window.value == value
        else:
            assert window.value == pytest.approx(value, rel=1e-12, abs=1e-12)


# -- writing and reading points ------------------------------------------------------


def test_roundtrip_keeps_types_time_and_tags(ts_url: str) -> None:
    plus2 = timezone(timedelta(hours=2))

    async def body(s: TimeSeriesStore) -> None:
        local = datetime(2024, 1, 15, 12, 0, 0, 123456, tzinfo=plus2)  # 10:00:00.123456Z
        await s.write(
            Point(
                "cpu",
                {"host": "web-1", "region": "eu"},
                {"usage": 1.0, "cores": 8, "throttled": False, "state": "ok"},
                local,
            )
        )
        await s.write(Point("cpu", {"host": "web-2"}, {"usage": 0.25}, T0 + timedelta(hours=1)))
        got = await everything(s, "cpu")
        assert [(p.tags, p.time) for p in got] == [
            ({"host": "web-1", "region": "eu"}, T0 + timedelta(microseconds=123456)),
            ({"host": "web-2"}, T0 + timedelta(hours=1)),
        ]
        first = got[0]
        assert first.time.tzinfo is not None and first.time.utcoffset() == timedelta(0)
        assert first.fields == {"usage": 1.0, "cores": 8, "throttled": False, "state": "ok"}
        assert list(first.fields) == ["cores", "state", "throttled", "usage"]  # sorted
        kinds = {k: type(v) for k, v in first.fields.items()}
        assert kinds == {"usage": float, "cores": int, "throttled": bool, "state": str}
        assert await s.measurements() == ["cpu"]

    run(ts_url, body)


def test_range_is_half_open_and_ordered_by_time_then_tags(ts_url: str) -> None:
    async def body(s: TimeSeriesStore) -> None:
        points = [
            Point("m", {"k": "b"}, {"v": 1.0}, T0),
            Point("m", {"k": "a"}, {"v": 2.0}, T0),
            Point("m", {"k": "a"}, {"v": 3.0}, T0 + timedelta(seconds=1)),
            Point("m", {"k": "a"}, {"v": 4.0}, T0 + timedelta(seconds=2)),
            Point("m", {"k": "a"}, {"v": 0.5}, T0 - US),
        ]
        await s.write_many(reversed(points))
        got = await s.query("m", start=T0, end=T0 + timedelta(seconds=2))
        assert [(p.time, p.tags["k"], p.fields["v"]) for p in got] == [
            (T0, "a", 2.0),
            (T0, "b", 1.0),
            (T0 + timedelta(seconds=1), "a", 3.0),
        ]
        assert await s.query("m", start=T0, end=T0) == []

    run(ts_url, body)


def test_same_series_and_time_merges_fields(ts_url: str) -> None:
    async def body(s: TimeSeriesStore) -> None:
        await s.write(Point("m", {"k": "a"}, {"x": 1.0, "y": 2.0}, T0))
        await s.write(Point("m", {"k": "a"}, {"y": 20.0, "z": "new"}, T0))
        await s.write_many(
            [Point("m", {"k": "a"}, {"x": 5.0}, T0), Point("m", {"k": "a"}, {"x": 6.0}, T0)]
        )
        [point] = await everything(s, "m")
        assert point.fields == {"x": 6.0, "y": 20.0, "z": "new"}

    run(ts_url, body)


def test_tag_filter_field_selection_and_limit(ts_url: str) -> None:
    async def body(s: TimeSeriesStore) -> None:
        points = []
        for i in range(12):
            tags = {"host": f"h{i % 3}", "dc": "east" if i % 2 else "west"}
            fields: dict[str, float | int | bool | str] = {"load": float(i)}
            if i % 4 == 0:
                fields["errors"] = i
            points.append(Point("sys", tags, fields, T0 + timedelta(seconds=i)))
        points.append(Point("sys", {"host": "h0"}, {"load": 99.0}, T0 + timedelta(seconds=3)))
        await s.write_many(points)
        everything_ = sorted(points, key=lambda p: (p.time, sorted(p.tags.items())))

        got = await s.query("sys", start=T0, end=FAR_FUTURE, tags={"host": "h1"})
        assert [p.fields["load"] for p in got] == [1.0, 4.0, 7.0, 10.0]
        got = await s.query("sys", start=T0, end=FAR_FUTURE, tags={"host": "h0", "dc": "east"})
        assert [p.fields["load"] for p in got] == [3.0, 9.0]
        assert await s.query("sys", start=T0, end=FAR_FUTURE, tags={"host": "nope"}) == []

        got = await s.query("sys", start=T0, end=FAR_FUTURE, fields=["errors"])
        assert [(p.time, p.fields) for p in got] == [
            (T0 + timedelta(seconds=i), {"errors": i}) for i in (0, 4, 8)
        ]
        got = await s.query("sys", start=T0, end=FAR_FUTURE, fields=["errors", "load"], limit=2)
        assert [p.fields for p in got] == [{"load": 0.0, "errors": 0}, {"load": 1.0}]

        for n in (1, 3, 4, 5, 13, 50):
            got = await s.query("sys", start=T0, end=FAR_FUTURE, limit=n)
            assert got == everything_[:n], n

    run(ts_url, body)


# -- aggregates ----------------------------------------------------------------------


def http_requests(now: datetime, rng: random.Random) -> list[Point]:
    """The seed's metric: http_requests{endpoint, status} response_time, over 80 minutes."""
    points = []
    for _ in range(600):
        when = now - timedelta(microseconds=rng.randrange(80 * 60 * 1_000_000))
        endpoint = rng.choice(["/api/users", "/api/users", "/api/orders"])
        status = rng.choice(["200", "200", "200", "500"])
        rt = round(rng.lognormvariate(3.8, 0.5), 3)
        points.append(
            Point(
                "http_requests",
                {"endpoint": endpoint, "status": status},
                {"response_time": rt},
                when,
            )
        )
    return points


def test_seed_http_requests_mean_every_5m_over_the_last_hour(ts_url: str) -> None:
    async def body(s: TimeSeriesStore) -> None:
        # "now" 2.5 minutes into a 5-minute window, so the first (partial) window of
        # the last hour is long enough to hold points whatever the wall clock says.
        real = datetime.now(UTC)
        now = real.replace(minute=real.minute - real.minute % 5, second=0, microsecond=0)
        now += timedelta(minutes=2, seconds=30)
        if now > real:
            now -= timedelta(minutes=5)
        points = http_requests(now, random.Random(7))
        # The seed's own point: endpoint=/api/users, status=200, response_time=45.2.
        points.append(
            Point(
                "http_requests",
                {"endpoint": "/api/users", "status": "200"},
                {"response_time": 45.2},
                now - timedelta(minutes=1),
            )
        )
        await s.write_many(points)
        start, every = now - timedelta(hours=1), timedelta(minutes=5)
        got = await s.aggregate(
            "http_requests",
            "response_time",
            fn="mean",
            every=every,
            start=start,
            end=now,
            tags={"endpoint": "/api/users"},
        )
        want = expected_windows(
            points, "response_time", "mean", every, start, now, {"endpoint": "/api/users"}
        )
        assert len(want) == 13  # "now" is not on a 5-minute boundary
        assert_windows(got, want, exact=False)
        assert all(w.start.minute % 5 == 0 and w.start.second == 0 for w in got)
        assert got[0].start <= start < got[0].start + every

        by_status = await s.aggregate(
            "http_requests",
            "response_time",
            fn="mean",
            every=every,
            start=start,
            end=now,
            tags={"endpoint": "/api/users"},
            group_by=["status"],
        )
        want = expected_windows(
            points,
            "response_time",
            "mean",
            every,
            start,
            now,
            {"endpoint": "/api/users"},
            ["status"],
        )
        want.sort(key=lambda w: (w[0], sorted(w[2].items())))
        assert_windows(by_status, want, exact=False)
        assert {w.tags["status"] for w in by_status} == {"200", "500"}

    run(ts_url, body)


FUNCTIONS = ["min", "max", "sum", "count", "median", "p95", "p50", "p99", "p10", "p1", "mean"]


def test_every_function_agrees_with_a_python_reference(ts_url: str) -> None:
    async def body(s: TimeSeriesStore) -> None:
        rng = random.Random(11)
        points = []
        for i in range(400):
            when = T0 + timedelta(microseconds=rng.randrange(3 * 3600 * 1_000_000))
            host = f"h{rng.randrange(3)}"
            fields: dict[str, float | int | bool | str] = {
                "latency": round(rng.uniform(0, 500), 2),
                "bytes": rng.randrange(-1000, 10**6),
            }
            points.append(Point("req", {"host": host}, fields, when + timedelta(microseconds=i)))
        await s.write_many(points)
        start, end = T0 + timedelta(minutes=7), T0 + timedelta(hours=3)
        for field in ("latency", "bytes"):
            for fn in FUNCTIONS:
                for every, group_by in (
                    (timedelta(minutes=20), None),
                    (timedelta(minutes=3), ["host"]),
                    (timedelta(hours=5), None),
                ):
                    got = await s.aggregate(
                        "req", field, fn=fn, every=every, start=start, end=end, group_by=group_by
                    )
                    want = expected_windows(points, field, fn, every, start, end, None, group_by)
                    want.sort(key=lambda w: (w[0], sorted(w[2].items())))
                    exact = fn not in ("mean", "sum") or field == "bytes"
                    assert_windows(got, want, exact=exact)
        # Small windows: a low percentile has no value and the window is left out.
        few = await s.aggregate(
            "req", "latency", fn="p1", every=timedelta(minutes=1), start=start, end=end
        )
        assert len(few) < len(
            await s.aggregate(
                "req", "latency", fn="count", every=timedelta(minutes=1), start=start, end=end
            )
        )

    run(ts_url, body)


def test_percentile_is_nearest_rank_on_a_known_list(ts_url: str) -> None:
    async def body(s: TimeSeriesStore) -> None:
        values = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 11]
        await s.write_many(
            Point("p", {}, {"v": float(v)}, T0 + timedelta(seconds=i)) for i, v in enumerate(values)
        )
        expected = {
            "p5": 1.0,
            "p10": 1.0,
            "p25": 3.0,
            "p49": 5.0,
            "p50": 6.0,
            "p90": 10.0,
            "p95": 10.0,
            "p99": 11.0,
            "p100": 11.0,
            "p4.5": None,  # rank floor(11 * 0.045 + 0.5) = 0: no value
            "median": 6.0,
        }
        for fn, want in expected.items():
            got = await s.aggregate(
                "p", "v", fn=fn, every=timedelta(hours=1), start=T0, end=T0 + timedelta(hours=1)
            )
            assert [w.value for w in got] == ([] if want is None else [want]), fn
        even = await s.aggregate(
            "p",
            "v",
            fn="median",
            every=timedelta(hours=1),
            start=T0,
            end=T0 + timedelta(seconds=10),
        )
        assert [w.value for w in even] == [5.5]
        # A first window too small for the rank has no value; the later ones still count.
        await s.write(Point("q", {}, {"v": 1.0}, T0))
        await s.write_many(
            Point("q", {}, {"v": float(i)}, T0 + timedelta(seconds=10, milliseconds=i))
            for i in range(10)
        )
        got = await s.aggregate(
            "q", "v", fn="p10", every=timedelta(seconds=10), start=T0, end=T0 + timedelta(hours=1)
        )
        assert [(w.start, w.value) for w in got] == [(T0 + timedelta(seconds=10), 0.0)]

    run(ts_url, body)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(
        st.tuples(
            st.integers(min_value=-(10**9), max_value=10**9),  # µs offsets, around the epoch too
            st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        ),
        min_size=1,
        max_size=40,
    ),
    every_s=st.integers(min_value=1, max_value=400),
    fn=st.sampled_from(["min", "max", "count", "median", "p50", "p90", "p33.3", "mean"]),
)
def test_windows_agree_with_the_reference_for_any_data(
    ts_url: str, values: list[tuple[int, float]], every_s: int, fn: str
) -> None:
    base = datetime(1970, 1, 1, tzinfo=UTC)  # negative times check the epoch alignment

    async def body(s: TimeSeriesStore) -> None:
        measurement = f"h{next(_EXAMPLES)}"  # each example its own measurement
        points = {off: Point(measurement, {}, {"v": v}, base + off * US) for off, v in values}
        await s.write_many(points.values())
        every = timedelta(seconds=every_s)
        start, end = base - timedelta(seconds=900), base + timedelta(seconds=900)
        got = await s.aggregate(measurement, "v", fn=fn, every=every, start=start, end=end)
        want = expected_windows(points.values(), "v", fn, every, start, end)
        assert_windows(got, want, exact=fn != "mean")
        await s.drop_measurement(measurement)

    run(ts_url, body)


def test_windows_align_to_the_epoch_not_to_start(ts_url: str) -> None:
    async def body(s: TimeSeriesStore) -> None:
        points = [Point("a", {}, {"v": float(i)}, T0 + timedelta(seconds=i)) for i in range(30)]
        await s.write_many(points)
        every = timedelta(seconds=7)
        start, end = T0 + timedelta(seconds=2), T0 + timedelta(seconds=25)
        got = await s.aggregate("a", "v", fn="count", every=every, start=start, end=end)
        epoch_s = int((T0 - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
        first = T0 + timedelta(seconds=2 - (epoch_s + 2) % 7)
        assert first < start  # the first window starts before `start` ...
        assert got[0].start == first
        assert [w.start for w in got] == [first + i * every for i in range(len(got))]
        assert sum(w.value or 0 for w in got) == 23.0  # ... but counts only seconds 2..24
        assert_windows(got, expected_windows(points, "v", "count", every, start, end), exact=True)

    run(ts_url, body)


def test_group_by_keeps_each_group_and_omits_missing_tags(ts_url: str) -> None:
    async def body(s: TimeSeriesStore) -> None:
        await s.write_many(
            [
                Point("g", {"host": "a", "dc": "x"}, {"v": 1.0}, T0),
                Point("g", {"host": "a", "dc": "y"}, {"v": 3.0}, T0 + timedelta(seconds=1)),
                Point("g", {"host": "b", "dc": "x"}, {"v": 10.0}, T0 + timedelta(seconds=2)),
                Point("g", {"dc": "x"}, {"v": 100.0}, T0 + timedelta(seconds=3)),
            ]
        )
        hour = timedelta(hours=1)
        got = await s.aggregate(
            "g", "v", fn="sum", every=hour, start=T0, end=T0 + hour, group_by=["host"]
        )
        assert [(w.tags, w.value) for w in got] == [
            ({}, 100.0),
            ({"host": "a"}, 4.0),
            ({"host": "b"}, 10.0),
        ]
        got = await s.aggregate(
            "g",
            "v",
            fn="max",
            every=hour,
            start=T0,
            end=T0 + hour,
            group_by=["dc", "host"],
            tags={"dc": "x"},
        )
        assert [(w.tags, w.value) for w in got] == [
            ({"dc": "x"}, 100.0),
            ({"dc": "x", "host": "a"}, 1.0),
            ({"dc": "x", "host": "b"}, 10.0),
        ]

    run(ts_url, body)


def test_count_works_on_strings_and_booleans_other_functions_do_not(ts_url: str) -> None:
    async def body(s: TimeSeriesStore) -> None:
        await s.write_many(
            Point("ev", {}, {"kind": "click", "ok": i % 2 == 0}, T0 + timedelta(seconds=i))
            for i in range(5)
        )
        hour = timedelta(hours=1)
        for field in ("kind", "ok"):
            got = await s.aggregate("ev", field, fn="count", every=hour, start=T0, end=T0 + hour)
            assert [w.value for w in got] == [5.0]
            for fn in ("mean", "sum", "min", "max", "median", "p90"):
                with pytest.raises(InvalidQueryError, match=field):
                    await s.aggregate("ev", field, fn=fn, every=hour, start=T0, end=T0 + hour)

    run(ts_url, body)


def test_downsample_writes_one_point_per_window_keeping_group_tags(ts_url: str) -> None:
    async def body(s: TimeSeriesStore) -> None:
        rng = random.Random(5)
        points = [
            Point(
                "http_requests",
                {"endpoint": rng.choice(["/a", "/b"]), "status": "200"},
                {"response_time": rng.uniform(10, 90)},
                T0 + timedelta(seconds=second),
            )
            for second in rng.sample(range(3600), 200)
        ]
        await s.write_many(points)
        every, end = timedelta(minutes=10), T0 + timedelta(hours=1)
        written = await s.downsample(
            "http_requests",
            "http_requests_10m",
            "response_time",
            fn="p95",
            every=every,
            start=T0,
            end=end,
            group_by=["endpoint"],
        )
        want = expected_windows(points, "response_time", "p95", every, T0, end, None, ["endpoint"])
        assert written == len(want) == 12
        got = await everything(s, "http_requests_10m")
        assert sorted((p.time, p.tags["endpoint"], p.fields["response_time"]) for p in got) == (
            sorted((w, t["endpoint"], v) for w, v, t in want)
        )
        assert all(p.tags.keys() == {"endpoint"} for p in got)
        assert len(await everything(s, "http_requests")) == 200  # the source is untouched
        # A count lands as a float field under a name of one's choice.
        n = await s.downsample(
            "http_requests",
            "hourly",
            "response_time",
            fn="count",
            every=timedelta(hours=1),
            start=T0,
            end=end,
            target_field="requests",
        )
        [point] = await everything(s, "hourly")
        assert n == 1 and point.fields == {"requests": 200.0} and point.tags == {}
        with pytest.raises(InvalidQueryError):
            await s.downsample(
                "http_requests",
                "http_requests",
                "response_time",
                fn="mean",
                every=every,
                start=T0,
                end=end,
            )

    run(ts_url, body)


# -- retention and measurements ------------------------------------------------------------


def test_retention_drops_only_older_points(ts_url: str) -> None:
    async def body(s: TimeSeriesStore) -> None:
        now = datetime.now(UTC)
        old = [
            Point("cpu", {"h": "a"}, {"v": float(i)}, now - timedelta(days=10, minutes=i))
            for i in range(5)
        ]
        new = [
            Point("cpu", {"h": "a"}, {"v": float(i)}, now - timedelta(minutes=i)) for i in range(5)
        ]
        other = [
            Point("mem", {}, {"v": 1.0}, now - timedelta(days=10)),
            Point("mem", {}, {"v": 2.0}, now - timedelta(hours=1)),
        ]
        await s.write_many(old + new + other)
        await s.retention(timedelta(days=7), measurement="cpu")
        assert [p.time for p in await everything(s, "cpu")] == sorted(p.time for p in new)
        assert len(await everything(s, "mem")) == 2  # another measurement is untouched
        await s.retention(now - timedelta(minutes=30))  # every measurement, by datetime
        assert await s.measurements() == ["cpu"]
        with pytest.raises(NotFoundError, match="mem"):
            await everything(s, "mem")
        assert len(await everything(s, "cpu")) == 5
        bound = new[2].time
        await s.retention(bound)  # strictly older than the bound
        assert sorted(p.time for p in await everything(s, "cpu")) == sorted(
            p.time for p in new if p.time >= bound
        )

    run(ts_url, body)


def test_measurements_and_drop_measurement(ts_url: str) -> None:
    async def body(s: TimeSeriesStore) -> None:
        assert await s.measurements() == []
        for name in ("zeta", "alpha", "Mid", "ünï"):
            await s.write(Point(name, {}, {"v": 1.0}, T0))
        assert await s.measurements() == sorted(["zeta", "alpha", "Mid", "ünï"])
        await s.drop_measurement("zeta")
        await s.drop_measurement("never-was")  # no error
        await s.retention(timedelta(0), measurement="never-was")  # no error either
        assert await s.measurements() == sorted(["alpha", "Mid", "ünï"])
        with pytest.raises(NotFoundError, match="zeta"):
            await everything(s, "zeta")
        await s.write(Point("zeta", {}, {"v": "now a string"}, T0))  # types were dropped too
        assert [p.fields for p in await everything(s, "zeta")] == [{"v": "now a string"}]

    run(ts_url, body)


def test_missing_measurement_or_field_is_not_found(ts_url: str) -> None:
    async def body(s: TimeSeriesStore) -> None:
        hour = timedelta(hours=1)
        with pytest.raises(NotFoundError, match="nothing_here"):
            await s.query("nothing_here", start=T0, end=T0 + hour)
        with pytest.raises(NotFoundError, match="nothing_here"):
            await s.aggregate("nothing_here", "v", fn="mean", every=hour, start=T0, end=T0 + hour)
        await s.write(Point("m", {}, {"v": 1.0}, T0))
        with pytest.raises(NotFoundError, match="'w'"):
            await s.aggregate("m", "w", fn="mean", every=hour, start=T0, end=T0 + hour)
        # Present but empty in the range: an empty answer, not an error.
        assert await s.query("m", start=T0 + hour, end=T0 + 2 * hour) == []
        assert (
            await s.aggregate("m", "v", fn="mean", every=hour, start=T0 + hour, end=T0 + 2 * hour)
            == []
        )
        assert await s.query("m", start=T0, end=T0 + hour, fields=["w"]) == []

    run(ts_url, body)


# -- IoT readings as time series ------------------------------------------------------


def test_iot_sensor_readings(ts_url: str) -> None:
    """The seed's sensor_readings table, as a time series: recent readings of one sensor
    and hourly maxima per sensor."""

    async def body(s: TimeSeriesStore) -> None:
        rng = random.Random(3)
        readings = []
        for sensor in ("sensor_001", "sensor_002", "sensor_003"):
            for i in range(150):
                readings.append(
                    Point(
                        "sensor_readings",
                        {"sensor_id": sensor},
                        {
                            "temperature": round(rng.uniform(18, 28), 1),
                            "humidity": round(rng.uniform(30, 60), 1),
                        },
                        datetime(2024, 1, 15, tzinfo=UTC) + timedelta(minutes=2 * i),
                    )
                )
        readings.append(
            Point(
                "sensor_readings",
                {"sensor_id": "sensor_001"},
                {"temperature": 23.5, "humidity": 45.2},
                datetime(2024, 1, 15, 10, 30, tzinfo=UTC),
            )
        )
        await s.write_many(readings)
        since = datetime(2024, 1, 15, tzinfo=UTC)
        recent = await s.query(
            "sensor_readings",
            start=since,
            end=FAR_FUTURE,
            tags={"sensor_id": "sensor_001"},
            limit=100,
        )
        mine = sorted(
            (p for p in readings if p.tags["sensor_id"] == "sensor_001"), key=lambda p: p.time
        )
        assert len(recent) == 100
        assert [(p.time, p.fields) for p in recent] == [(p.time, p.fields) for p in mine[:100]]
        [at_1030] = await s.query(
            "sensor_readings",
            start=datetime(2024, 1, 15, 10, tzinfo=UTC),
            end=datetime(2024, 1, 15, 11, tzinfo=UTC),
            tags={"sensor_id": "sensor_001"},
        )
        assert at_1030.time == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
        assert at_1030.fields == {"temperature": 23.5, "humidity": 45.2}

        hour = timedelta(hours=1)
        got = await s.aggregate(
            "sensor_readings",
            "temperature",
            fn="max",
            every=hour,
            start=since,
            end=since + timedelta(days=1),
            group_by=["sensor_id"],
        )
        want = expected_windows(
            readings,
            "temperature",
            "max",
            hour,
            since,
            since + timedelta(days=1),
            None,
            ["sensor_id"],
        )
        want.sort(key=lambda w: (w[0], sorted(w[2].items())))
        assert len(want) == 5 * 3 + 1  # hours 0-4 for each sensor, 10:00 for sensor_001
        assert_windows(got, want, exact=True)

    run(ts_url, body)


# -- bad input: the exact error, and nothing changed ----------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Point("m", {}, {"v": float("nan")}, T0), "finite"),
        (lambda: Point("m", {}, {"v": float("inf")}, T0), "finite"),
        (lambda: Point("m", {}, {"v": 1.0}, datetime(2024, 1, 1)), "naive"),
        (lambda: Point("m", {}, {}, T0), "at least one field"),
        (lambda: Point("m", {"k": 1}, {"v": 1.0}, T0), "string"),  # type: ignore[dict-item]
        (lambda: Point("m", {}, {"v": None}, T0), "float, int, bool or str"),  # type: ignore[dict-item]
        (lambda: Point("m", {}, {"v": [1]}, T0), "float, int, bool or str"),  # type: ignore[dict-item]
        (lambda: Point("m", {}, {"v": 2**63}, T0), "64 bits"),
        (lambda: Point("m", {}, {"v": 1.0}, datetime(2300, 1, 1, tzinfo=UTC)), "range"),
        (lambda: Point("", {}, {"v": 1.0}, T0), "empty"),
        (lambda: Point("m", {"k": ""}, {"v": 1.0}, T0), "empty"),
        (lambda: Point("m", {"time": "x"}, {"v": 1.0}, T0), "time"),
        (lambda: Point("m", {}, {"time": 1.0}, T0), "time"),
        (lambda: Point("#m", {}, {"v": 1.0}, T0), "comment"),
        (lambda: Point("m", {"k": "a\nb"}, {"v": 1.0}, T0), "control"),
        (lambda: Point("m\tx", {}, {"v": 1.0}, T0), "control"),
        (lambda: Point("m", {"k": "ends\\"}, {"v": 1.0}, T0), "backslash"),
        (lambda: Point("m", {"k": "a\\,b"}, {"v": 1.0}, T0), "backslash"),
        (lambda: Point("m", {}, {'f\\"': 1.0}, T0), "backslash"),
        (lambda: Point("m", {}, {"v": "\ud800"}, T0), "surrogate"),
    ],
)
def test_invalid_points_are_refused_at_construction(make: Callable[[], Point], match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        make()


def test_bad_batch_writes_nothing(ts_url: str) -> None:
    async def body(s: TimeSeriesStore) -> None:
        await s.write_many(
            [
                Point("m", {"k": "a"}, {"v": 1.0, "n": 1, "s": "x"}, T0),
                Point("other", {}, {"v": 1.0}, T0),
            ]
        )
        before = await snapshot(s)
        good = [
            Point("m", {"k": "b"}, {"v": float(i)}, T0 + timedelta(seconds=i)) for i in range(1, 5)
        ]
        new = Point("brand_new", {}, {"v": 1.0}, T0)
        bad_batches = [
            [*good, new, Point("m", {"k": "c"}, {"v": "string into float"}, T0)],
            [*good, new, Point("m", {"k": "c"}, {"n": 1.5}, T0)],  # float into integer
            [*good, new, Point("m", {"k": "c"}, {"s": True}, T0)],  # bool into string
            [*good, new, Point("m", {"k": "c"}, {"v": 3}, T0)],  # int into float
            # Two types for one new field within the batch:
            [*good, Point("brand_new", {}, {"w": 1.0}, T0), Point("brand_new", {}, {"w": "x"}, T0)],
        ]
        for batch in bad_batches:
            with pytest.raises(InvalidValueError, match="nothing was written"):
                await s.write_many(batch)
            assert await snapshot(s) == before
        mutated = Point("m", {"k": "d"}, {"v": 1.0}, T0)
        mutated.fields["v"] = float("nan")  # type: ignore[index]
        with pytest.raises(InvalidValueError, match="finite"):
            await s.write_many([*good, mutated])
        with pytest.raises(InvalidValueError):
            await s.write_many("not points")  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError):
            await s.write({"measurement": "m"})  # type: ignore[arg-type]
        assert await snapshot(s) == before
        await s.write_many(good)  # the same good points alone are fine
        assert len(await everything(s, "m")) == 5

    run(ts_url, body)


def test_field_types_survive_retention_but_not_drop(ts_url: str) -> None:
    async def body(s: TimeSeriesStore) -> None:
        now = datetime.now(UTC)
        await s.write(Point("t", {}, {"v": 1.0}, now - timedelta(days=30)))
        await s.retention(timedelta(days=1))
        assert await s.measurements() == []
        with pytest.raises(NotFoundError):
            await everything(s, "t")
        with pytest.raises(InvalidValueError, match="float"):
            await s.write(Point("t", {}, {"v": "text"}, now - timedelta(days=30)))
        assert await s.measurements() == []
        await s.drop_measurement("t")
        await s.write(Point("t", {}, {"v": "text"}, now - timedelta(days=30)))
        assert [p.fields for p in await everything(s, "t")] == [{"v": "text"}]

    run(ts_url, body)


def test_bad_query_arguments(ts_url: str) -> None:
    async def body(s: TimeSeriesStore) -> None:
        await s.write(Point("m", {}, {"v": 1.0}, T0))
        before = await snapshot(s)
        hour = timedelta(hours=1)
        for fn in ("avg", "P95", "p0", "p101", "p", "p-5", "percentile", "", 95):
            with pytest.raises(InvalidQueryError):
                await s.aggregate("m", "v", fn=fn, every=hour, start=T0, end=T0 + hour)  # type: ignore[arg-type]
        for every in (timedelta(0), timedelta(seconds=-5), 60):
            with pytest.raises(InvalidQueryError, match="every"):
                await s.aggregate("m", "v", fn="mean", every=every, start=T0, end=T0 + hour)  # type: ignore[arg-type]
        with pytest.raises(InvalidQueryError, match="naive"):
            await s.query("m", start=datetime(2024, 1, 1), end=T0 + hour)
        with pytest.raises(InvalidQueryError, match="before start"):
            await s.query("m", start=T0 + hour, end=T0)
        for limit in (0, -1, True, 1.5):
            with pytest.raises(InvalidQueryError, match="limit"):
                await s.query("m", start=T0, end=T0 + hour, limit=limit)  # type: ignore[arg-type]
        with pytest.raises(InvalidQueryError):
            await s.query("m", start=T0, end=T0 + hour, fields=[])
        with pytest.raises(InvalidQueryError):
            await s.query("m", start=T0, end=T0 + hour, fields="v")
        with pytest.raises(InvalidQueryError):
            await s.query("m", start=T0, end=T0 + hour, tags={"k": 1})  # type: ignore[dict-item]
        with pytest.raises(InvalidQueryError):
            await s.aggregate(
                "m", "v", fn="mean", every=hour, start=T0, end=T0 + hour, group_by="k"
            )
        with pytest.raises(InvalidValueError):
            await s.retention(timedelta(days=-1))
        with pytest.raises(InvalidValueError, match="naive"):
            await s.retention(datetime(2024, 1, 1))
        assert await snapshot(s) == before

    run(ts_url, body)


# -- injection: hostile names and values are data ---------------------------------------

NASTY = [
    'quote"double',
    "quote'single",
    "back\\slash",
    "C:\\temp\\new",
    "\\\\server\\share",
    "comma,separated",
    "with space",
    " leading and trailing ",
    "equals=sign",
    "semi;colon",
    "'; DROP MEASUREMENT cpu; --",
    '"; DROP DATABASE x; SELECT * FROM "',
    "x' OR '1'='1",
    "$t0",
    "a\\nb",
    "ünïcödé ✓ 🙂",
    "/api/users?id=1&x=2",
    "\\\\\\ok",
    "a\\\\b",
]


def test_hostile_names_and_values_roundtrip_as_data(ts_url: str) -> None:
    async def body(s: TimeSeriesStore) -> None:
        await s.write(Point("cpu", {"host": "canary"}, {"v": 1.0}, T0))
        points = []
        for i, text in enumerate(NASTY):
            points.append(
                Point(
                    f"m {text}",
                    {"tag": text, f"key {text}": "x"},
                    {f"field {text}": float(i), "text": text + '\n"\\ end'},
                    T0 + timedelta(seconds=i),
                )
            )
            points.append(Point("shared", {"label": text}, {"n": i}, T0 + timedelta(seconds=i)))
        await s.write_many(points)
        names = await s.measurements()
        assert names == sorted(["cpu", "shared", *(f"m {t}" for t in NASTY)])
        for i, text in enumerate(NASTY):
            [got] = await s.query(f"m {text}", start=T0, end=FAR_FUTURE, tags={"tag": text})
            assert got.tags == {"tag": text, f"key {text}": "x"}
            assert got.fields == {f"field {text}": float(i), "text": text + '\n"\\ end'}
            [got] = await s.query(f"m {text}", start=T0, end=FAR_FUTURE, fields=[f"field {text}"])
            assert got.fields == {f"field {text}": float(i)}
            [only] = await s.query("shared", start=T0, end=FAR_FUTURE, tags={"label": text})
            assert only.fields == {"n": i}
            windows = await s.aggregate(
                f"m {text}",
                f"field {text}",
                fn="sum",
                every=timedelta(hours=1),
                start=T0,
                end=FAR_FUTURE,
                group_by=[f"key {text}"],
                tags={"tag": text},
            )
            assert [(w.value, w.tags) for w in windows] == [(float(i), {f"key {text}": "x"})]
        # Filter values that look like InfluxQL or SQL match nothing and break nothing.
        for probe in ("' OR 1=1 --", "x' OR time > 0 OR 'a'='a", '" OR 1=1', "\\'"):
            assert await s.query("shared", start=T0, end=FAR_FUTURE, tags={"label": probe}) == []
        by_label = await s.aggregate(
            "shared",
            "n",
            fn="count",
            every=timedelta(hours=1),
            start=T0,
            end=FAR_FUTURE,
            group_by=["label"],
        )
        assert sorted(w.tags["label"] for w in by_label) == sorted(NASTY)
        assert [p.tags for p in await everything(s, "cpu")] == [{"host": "canary"}]
        assert len(await everything(s, "shared")) == len(NASTY)
        await s.drop_measurement(f"m {NASTY[10]}")
        assert f"m {NASTY[10]}" not in await s.measurements()
        assert "cpu" in await s.measurements()

    run(ts_url, body)


def test_limit_beyond_64_bits_and_non_ascii_percentiles_are_refused(ts_url: str) -> None:
    """DuckDB answered limit=2**64 with a StoreError and took ``p٩٥`` (Arabic-Indic
    digits) as p95, which InfluxDB refuses: both backends now refuse both alike."""

    async def body(s: TimeSeriesStore) -> None:
        await s.write_many([Point("cpu", {"host": "a"}, {"v": 1.0}, T0)])
        with pytest.raises(InvalidValueError, match="limit"):
            await s.query("cpu", start=FAR_PAST, end=FAR_FUTURE, limit=2**64)
        for fn in ("p٩٥", "p９５", "p9５"):
            with pytest.raises(InvalidQueryError, match="unknown aggregate"):
                await s.aggregate(
                    "cpu", "v", fn=fn, every=timedelta(hours=1), start=FAR_PAST, end=FAR_FUTURE
                )
        windows = await s.aggregate(
            "cpu", "v", fn="p95", every=timedelta(hours=1), start=FAR_PAST, end=FAR_FUTURE
        )
        assert [w.value for w in windows] == [1.0]

    run(ts_url, body)
