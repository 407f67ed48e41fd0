"""The embedded time-series backend: one DuckDB file, InfluxDB semantics.

Schema: a series index and a narrow table of values, one row per field of a point,
so a window aggregate reads one typed column::

    multistore_ts_series (id BIGINT PRIMARY KEY, measurement VARCHAR, series VARCHAR,
                          tags MAP(VARCHAR, VARCHAR), UNIQUE (measurement, series))
    multistore_ts_points (series_id BIGINT, time TIMESTAMP, field VARCHAR,
                          value_float DOUBLE, value_int BIGINT, value_bool BOOLEAN,
                          value_str VARCHAR)
    multistore_ts_fields (measurement VARCHAR, field VARCHAR, kind VARCHAR,
                          PRIMARY KEY (measurement, field))

A series is a measurement with one tag set; ``series`` is the canonical text of the
tags (JSON of the sorted pairs) and ``id`` comes from the sequence
``multistore_ts_series_ids``. ``time`` is UTC with microseconds. Exactly one
``value_*`` column is set, the one of the field's kind, which
``multistore_ts_fields`` remembers (until ``drop_measurement``; ``retention`` keeps
it, as InfluxDB's shards do).

The points table has no primary key: an index would make every insert of this
append-mostly data dearer. A point written again replaces its fields as in InfluxDB:
the write deletes the rows it replaces and inserts the new ones in one transaction;
a point newer than its series' latest (the usual case) is a single INSERT. Range
scans use DuckDB's per-row-group min/max on ``time`` (zone maps), which prune well
because metrics arrive roughly in time order; tag filters and ``group_by`` read the
small series table.

Every operation runs on one :class:`~multistore.stores._worker.Worker` thread that
owns the connection. The stores of one process on one file share a cache of field
kinds, series ids and latest times (DuckDB lets one process at a time write a file),
so write through the store, not through :attr:`native`. URL:
``duckdb:///path.duckdb`` (``duckdb:///:memory:`` for a private in-memory store);
``create`` (default true) may create the file and its directory.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, ParamSpec, Self, TypeVar

import duckdb

from multistore.errors import (
    MultistoreError,
    NotFoundError,
    Outcome,
    StoreError,
    StoreUnavailableError,
)
from multistore.stores._limits import short_repr
from multistore.stores._worker import Worker
from multistore.stores.timeseries._api import TimeSeriesStore
from multistore.stores.timeseries._points import (
    FieldValue,
    Point,
    Window,
    check_batch,
    check_kinds,
    from_us,
    make_point,
    to_us,
)
from multistore.stores.timeseries._query import (
    Agg,
    check_aggregate,
    check_measurement,
    check_query,
    point_sort_key,
    retention_bound,
)
from multistore.urls import StoreURL

__all__ = ["DuckDBTimeSeriesStore", "DuckDBWork", "check_retention", "duckdb_error", "open_duckdb"]

P = ParamSpec("P")
T = TypeVar("T")

SERIES: Final = "multistore_ts_series"
POINTS: Final = "multistore_ts_points"
FIELDS: Final = "multistore_ts_fields"
_IDS: Final = "multistore_ts_series_ids"
_SCHEMA: Final = (
    f"CREATE SEQUENCE IF NOT EXISTS {_IDS}",
    f"""CREATE TABLE IF NOT EXISTS {SERIES} (
        id BIGINT PRIMARY KEY,
        measurement VARCHAR NOT NULL,
        series VARCHAR NOT NULL,
        tags MAP(VARCHAR, VARCHAR) NOT NULL,
        UNIQUE (measurement, series))""",
    f"""CREATE TABLE IF NOT EXISTS {POINTS} (
        series_id BIGINT NOT NULL,
        time TIMESTAMP NOT NULL,
        field VARCHAR NOT NULL,
        value_float DOUBLE,
        value_int BIGINT,
        value_bool BOOLEAN,
        value_str VARCHAR)""",
    f"""CREATE TABLE IF NOT EXISTS {FIELDS} (
        measurement VARCHAR NOT NULL,
        field VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,
        PRIMARY KEY (measurement, field))""",
)
_COLUMN: Final = {
    "float": "value_float",
    "integer": "value_int",
    "boolean": "value_bool",
    "string": "value_str",
}
_KINDS: Final = tuple(_COLUMN)
#: Up to this many rows are inserted as VALUES (cheap to bind), more by unnesting lists.
_VALUES_ROWS: Final = 32
_ROW: Final = "(?, make_timestamp(?::BIGINT), ?, ?, ?, ?, ?)"
_INSERT_VALUES: Final = f"INSERT INTO {POINTS} VALUES "
_INSERT_LISTS: Final = f"""INSERT INTO {POINTS}
    SELECT sid, make_timestamp(t), f, vf, vi, vb, vs FROM (SELECT
        unnest(?::BIGINT[]) AS sid, unnest(?::BIGINT[]) AS t, unnest(?::VARCHAR[]) AS f,
        unnest(?::DOUBLE[]) AS vf, unnest(?::BIGINT[]) AS vi, unnest(?::BOOLEAN[]) AS vb,
        unnest(?::VARCHAR[]) AS vs)"""
#: Remove the rows a batch replaces; the time bounds let the scan skip row groups.
_DELETE_SAME: Final = f"""DELETE FROM {POINTS} AS p USING (SELECT
        unnest(?::BIGINT[]) AS sid, unnest(?::BIGINT[]) AS t, unnest(?::VARCHAR[]) AS f) AS n
    WHERE p.time >= make_timestamp(?::BIGINT) AND p.time <= make_timestamp(?::BIGINT)
        AND p.series_id = n.sid AND p.time = make_timestamp(n.t) AND p.field = n.f"""
_INSERT_SERIES: Final = f"""INSERT INTO {SERIES}
    SELECT id, m, s, MAP(tk, tv) FROM (SELECT
        unnest(?::BIGINT[]) AS id, unnest(?::VARCHAR[]) AS m, unnest(?::VARCHAR[]) AS s,
        unnest(?::VARCHAR[][]) AS tk, unnest(?::VARCHAR[][]) AS tv)"""
_JOIN: Final = f"FROM {POINTS} AS p JOIN {SERIES} AS s ON s.id = p.series_id"
_RANGE: Final = "p.time >= make_timestamp(?::BIGINT) AND p.time < make_timestamp(?::BIGINT)"
_HAS_POINTS: Final = f"SELECT 1 {_JOIN} WHERE s.measurement = ? LIMIT 1"
_OF_MEASUREMENT: Final = f"SELECT id FROM {SERIES} WHERE measurement = ?"


def series_key(tags: Mapping[str, str]) -> str:
    """The canonical text of a tag set: JSON of the sorted pairs."""
    return json.dumps(sorted(tags.items()), ensure_ascii=False, separators=(",", ":"))


@dataclass
class _Known:
    """What the catalog knows about one measurement."""

    kinds: dict[str, str] = field(default_factory=dict)
    series: dict[str, int] = field(default_factory=dict)
    """series key -> id"""
    tags: dict[int, dict[str, str]] = field(default_factory=dict)
    """series id -> its tags"""
    latest: dict[int, int] = field(default_factory=dict)
    """series id -> an upper bound of its latest time (µs); a newer point replaces nothing"""


class _Catalog:
    """What writes need to know about one database file (field kinds, series ids,
    latest times), loaded per measurement on first use and shared by every store of
    this process on the file. The lock serialises a write's checks and its statements
    across those stores."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.measurements: dict[str, _Known] = {}


_CATALOGS: weakref.WeakValueDictionary[str, _Catalog] = weakref.WeakValueDictionary()
_CATALOGS_LOCK: Final = threading.Lock()


def _catalog_for(path: str) -> _Catalog:
    if path == ":memory:":
        return _Catalog()  # a private database per connection
    with _CATALOGS_LOCK:
        key = os.path.realpath(path)
        catalog = _CATALOGS.get(key)
        if catalog is None:
            catalog = _CATALOGS[key] = _Catalog()
        return catalog


def _connect(path: str, create: bool) -> tuple[duckdb.DuckDBPyConnection, _Catalog]:
    if path != ":memory:":
        file = Path(path)
        if not file.exists():
            if not create:
                raise NotFoundError(f"DuckDB file {path} does not exist (create=false)")
            file.parent.mkdir(parents=True, exist_ok=True)
    conn = duckdb.connect(path)
    try:
        for statement in _SCHEMA:
            conn.execute(statement)
    except BaseException:
        conn.close()
        raise
    return conn, _catalog_for(path)


def open_duckdb(url: StoreURL) -> tuple[duckdb.DuckDBPyConnection, _Catalog]:
    """Open (or create) the URL's DuckDB file with the schema, and its shared catalog."""
    path = url.path
    try:
        return _connect(path, bool(url.option("create", True)))
    except duckdb.Error as exc:
        raise StoreUnavailableError(
            f"cannot open DuckDB file {path}: {' '.join(str(exc).split())}",
            outcome=Outcome.DEFINITE,
        ) from exc


def check_retention(
    older_than: timedelta | datetime, measurement: str | None
) -> tuple[int, str | None]:
    """``retention``'s checks: the bound in epoch microseconds, and the measurement."""
    bound = retention_bound(older_than, datetime.now(UTC))
    return bound, None if measurement is None else check_measurement(measurement)


def duckdb_error(exc: duckdb.Error) -> StoreError:
    return StoreError(f"DuckDB failed: {exc}")


class DuckDBWork:
    """The DuckDB time-series work on one connection, shared by the async store (which
    runs each piece on its worker thread) and the sync store (on the calling thread,
    under its lock): the catalog, the writes, the queries and the housekeeping."""

    _conn: duckdb.DuckDBPyConnection
    _catalog: _Catalog

    # -- the catalog (call with its lock held) -------------------------------------------

    def _known(self, measurements: Collection[str], *, reload: bool = False) -> dict[str, _Known]:
        catalog = self._catalog.measurements
        missing = [m for m in measurements if reload or m not in catalog]
        if missing:
            found = {m: _Known() for m in missing}
            for m, name, kind in self._conn.execute(
                f"SELECT measurement, field, kind FROM {FIELDS} "
                "WHERE list_contains(?::VARCHAR[], measurement)",
                [missing],
            ).fetchall():
                found[m].kinds[name] = kind
            for m, key, sid, us in self._conn.execute(
                f"SELECT s.measurement, s.series, s.id, epoch_us(max(p.time)) FROM {SERIES} AS s "
                f"LEFT JOIN {POINTS} AS p ON p.series_id = s.id "
                "WHERE list_contains(?::VARCHAR[], s.measurement) GROUP BY ALL",
                [missing],
            ).fetchall():
                found[m].series[key] = sid
                found[m].tags[sid] = dict(json.loads(key))
                if us is not None:
                    found[m].latest[sid] = int(us)
            catalog.update(found)
        return {m: catalog[m] for m in measurements}

    # -- writes --------------------------------------------------------------------

    def _write(self, batch: list[Point], kinds: dict[str, dict[str, str]]) -> None:
        conn = self._conn
        with self._catalog.lock:
            known = self._known(kinds)
            stale = [
                m
                for m, wanted in kinds.items()
                if any(known[m].kinds.get(k, v) != v for k, v in wanted.items())
            ]
            if stale:  # a conflict: ask the file, which has the last word
                known.update(self._known(stale, reload=True))
            new_kinds: list[tuple[str, str, str]] = []
            for measurement, wanted in kinds.items():
                have = known[measurement].kinds
                check_kinds(measurement, wanted, have)
                new_kinds.extend((measurement, k, v) for k, v in wanted.items() if k not in have)

            new_series: dict[tuple[str, str], Mapping[str, str]] = {}
            keyed: list[tuple[str, str, Point]] = []
            for point in batch:
                key = series_key(point.tags)
                keyed.append((point.measurement, key, point))
                if key not in known[point.measurement].series:
                    new_series.setdefault((point.measurement, key), point.tags)
            ids: dict[tuple[str, str], int] = {}
            if new_series:
                fresh = conn.execute(
                    f"SELECT nextval('{_IDS}') FROM range(?)", [len(new_series)]
                ).fetchall()
                ids = {k: int(row[0]) for k, row in zip(new_series, fresh, strict=True)}

            rows: dict[tuple[int, int, str], tuple[FieldValue, str]] = {}
            for measurement, key, point in keyed:
                sid = known[measurement].series.get(key)
                if sid is None:
                    sid = ids[(measurement, key)]
                us = to_us(point.time)
                for name, value in point.fields.items():
                    rows[(sid, us, name)] = (value, kinds[measurement][name])
            newest: dict[tuple[str, int], int] = {}
            replaces = False
            for measurement, key, point in keyed:
                sid = known[measurement].series.get(key, ids.get((measurement, key), -1))
                us = to_us(point.time)
                bound = known[measurement].latest.get(sid)
                replaces = replaces or (bound is not None and us <= bound)
                newest[(measurement, sid)] = max(us, newest.get((measurement, sid), us))

            if new_kinds or new_series or replaces:
                conn.execute("BEGIN TRANSACTION")
                try:
                    if new_kinds:
                        conn.execute(
                            f"INSERT INTO {FIELDS} SELECT unnest(?::VARCHAR[]), "
                            "unnest(?::VARCHAR[]), unnest(?::VARCHAR[])",
                            [list(column) for column in zip(*new_kinds, strict=True)],
                        )
                    if new_series:
                        self._insert_series(new_series, ids)
                    if replaces:
                        self._delete_same(rows)
                    self._insert(rows)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            else:
                self._insert(rows)  # one statement: atomic on its own
            for measurement, name, kind in new_kinds:
                known[measurement].kinds[name] = kind
            for (measurement, key), sid in ids.items():
                known[measurement].series[key] = sid
                known[measurement].tags[sid] = dict(new_series[(measurement, key)])
            for (measurement, sid), us in newest.items():
                latest = known[measurement].latest
                latest[sid] = max(us, latest.get(sid, us))

    def _insert_series(
        self, new: dict[tuple[str, str], Mapping[str, str]], ids: dict[tuple[str, str], int]
    ) -> None:
        columns: list[list[Any]] = [[], [], [], [], []]
        for (measurement, key), tags in new.items():
            names = sorted(tags)
            for i, item in enumerate(
                (ids[(measurement, key)], measurement, key, names, [tags[n] for n in names])
            ):
                columns[i].append(item)
        self._conn.execute(_INSERT_SERIES, columns)

    def _delete_same(self, rows: dict[tuple[int, int, str], tuple[FieldValue, str]]) -> None:
        columns: list[list[Any]] = [[], [], []]
        for sid, us, name in rows:
            columns[0].append(sid)
            columns[1].append(us)
            columns[2].append(name)
        self._conn.execute(_DELETE_SAME, [*columns, min(columns[1]), max(columns[1])])

    def _insert(self, rows: dict[tuple[int, int, str], tuple[FieldValue, str]]) -> None:
        """Insert value rows: a few as VALUES, many by unnesting one list per column."""
        flat: list[tuple[Any, ...]] = [
            (sid, us, name, *(value if kind == k else None for k in _KINDS))
            for (sid, us, name), (value, kind) in rows.items()
        ]
        if len(flat) <= _VALUES_ROWS:
            params = [item for row in flat for item in row]
            self._conn.execute(_INSERT_VALUES + ", ".join([_ROW] * len(flat)), params)
        else:
            self._conn.execute(_INSERT_LISTS, [list(column) for column in zip(*flat, strict=True)])

    # -- reads ---------------------------------------------------------------------

    def _must_exist(self, measurement: str) -> None:
        if self._conn.execute(_HAS_POINTS, [measurement]).fetchone() is None:
            raise NotFoundError(f"measurement {short_repr(measurement)} not found")

    def _query(
        self,
        measurement: str,
        start_us: int,
        end_us: int,
        tags: dict[str, str],
        fields: list[str] | None,
        limit: int | None,
    ) -> list[Point]:
        # The tag filter runs on the catalog's series; the scan reads one narrow table.
        with self._catalog.lock:
            known = self._known([measurement])[measurement]
            series = {
                sid: series_tags
                for sid, series_tags in known.tags.items()
                if all(series_tags.get(k) == v for k, v in tags.items())
            }
        if not series:
            self._must_exist(measurement)
            return []
        where = f"list_contains(?::BIGINT[], series_id) AND {_RANGE.replace('p.', '')}"
        params: list[Any] = [list(series), start_us, end_us]
        if fields is not None:
            where += " AND list_contains(?::VARCHAR[], field)"
            params.append(fields)
        outer, outer_params = where, list(params)
        if limit is not None:
            # Every point up to the time of the limit-th point (ties included); the
            # exact cut is made below, in the same order as the InfluxDB backend.
            outer += (
                " AND time <= (SELECT max(time) FROM (SELECT DISTINCT series_id, time "
                f"FROM {POINTS} WHERE {where} ORDER BY time LIMIT ?))"
            )
            outer_params += [*params, limit]
        rows = self._conn.execute(
            f"SELECT series_id, epoch_us(time), field, value_float, value_int, value_bool, "
            f"value_str FROM {POINTS} WHERE {outer}",
            outer_params,
        ).fetchall()
        if not rows:
            self._must_exist(measurement)
            return []
        grouped: dict[tuple[int, int], tuple[dict[str, str], dict[str, FieldValue]]] = {}
        for sid, us, name, vf, vi, vb, vs in rows:
            entry = grouped.get((sid, us))
            if entry is None:
                entry = grouped[(sid, us)] = (dict(series[sid]), {})
            entry[1][name] = _pick(vf, vi, vb, vs)
        ordered = sorted(grouped.items(), key=lambda item: point_sort_key(item[1][0], item[0][1]))
        if limit is not None:
            ordered = ordered[:limit]
        return [
            make_point(measurement, point_tags, dict(sorted(values.items())), from_us(us))
            for (_, us), (point_tags, values) in ordered
        ]

    def _aggregate(
        self,
        measurement: str,
        field: str,
        agg: Agg,
        every_us: int,
        start_us: int,
        end_us: int,
        tags: dict[str, str],
        group_by: list[str],
    ) -> list[Window]:
        with self._catalog.lock:
            kind = self._known([measurement])[measurement].kinds.get(field)
        if kind is None:
            self._must_exist(measurement)
            raise NotFoundError(
                f"field {short_repr(field)} not found in measurement {short_repr(measurement)}"
            )
        agg.check_kind(measurement, field, kind)
        groups = [f"g{i}" for i in range(len(group_by))]
        select = ["epoch_us(p.time) - ((epoch_us(p.time) % ?) + ?) % ? AS w"]
        params: list[Any] = [every_us, every_us, every_us]
        for alias, key in zip(groups, group_by, strict=True):
            select.append(f"s.tags[?] AS {alias}")
            params.append(key)
        select.append(f"p.{_COLUMN[kind]} AS x")
        where = f"s.measurement = ? AND p.field = ? AND {_RANGE}"
        params += [measurement, field, start_us, end_us]
        for key, value in tags.items():
            where += " AND s.tags[?] = ?"
            params += [key, value]
        keys = ", ".join(["w", *groups])
        inner = f"SELECT {', '.join(select)} {_JOIN} WHERE {where}"
        value_sql, value_params = _value_sql(agg)
        if agg.name in ("median", "percentile"):
            sql = (
                f"SELECT {keys}, {value_sql} FROM (SELECT {keys}, list_sort(list(x)) AS l "
                f"FROM ({inner}) GROUP BY {keys})"
            )
            all_params = [*value_params, *params]
        else:
            sql = f"SELECT {keys}, {value_sql} FROM ({inner}) GROUP BY {keys}"
            all_params = params
        rows = self._conn.execute(sql, all_params).fetchall()
        if not rows:
            self._must_exist(measurement)
        windows: list[tuple[tuple[int, tuple[tuple[str, str], ...]], Window]] = []
        for row in rows:
            value = row[-1]
            if value is None:
                continue
            pairs = zip(group_by, row[1:-1], strict=True)
            group = {key: val for key, val in pairs if val is not None}
            window = Window(from_us(row[0]), float(value), group)
            windows.append((point_sort_key(group, row[0]), window))
        windows.sort(key=lambda item: item[0])
        return [window for _, window in windows]

    # -- housekeeping ------------------------------------------------------------------

    def _retention(self, bound: int, measurement: str | None) -> None:
        # The latest times in the catalog stay upper bounds, which is all they promise.
        sql = f"DELETE FROM {POINTS} WHERE time < make_timestamp(?::BIGINT)"
        if measurement is None:
            self._conn.execute(sql, [bound])
        else:
            self._conn.execute(f"{sql} AND series_id IN ({_OF_MEASUREMENT})", [bound, measurement])

    def _measurements(self) -> list[str]:
        rows = self._conn.execute(
            f"SELECT DISTINCT s.measurement FROM {SERIES} AS s "
            f"WHERE EXISTS (SELECT 1 FROM {POINTS} AS p WHERE p.series_id = s.id)"
        ).fetchall()
        return sorted(str(row[0]) for row in rows)

    def _drop(self, measurement: str) -> None:
        conn = self._conn
        with self._catalog.lock:
            conn.execute("BEGIN TRANSACTION")
            try:
                conn.execute(
                    f"DELETE FROM {POINTS} WHERE series_id IN ({_OF_MEASUREMENT})", [measurement]
                )
                conn.execute(f"DELETE FROM {SERIES} WHERE measurement = ?", [measurement])
                conn.execute(f"DELETE FROM {FIELDS} WHERE measurement = ?", [measurement])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                self._catalog.measurements.pop(measurement, None)


class DuckDBTimeSeriesStore(DuckDBWork, TimeSeriesStore):
    """Time series in a DuckDB file."""

    def __init__(
        self, url: StoreURL, conn: duckdb.DuckDBPyConnection, catalog: _Catalog, worker: Worker
    ) -> None:
        self.url = url
        self._conn = conn
        self._worker = worker
        self._catalog = catalog
        self._closed = False

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        worker = Worker("duckdb-timeseries")
        try:
            conn, catalog = await worker.run(open_duckdb, url)
        except BaseException:
            worker.close()
            raise
        return cls(url, conn, catalog, worker)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Let go of the shared catalog: once no store has the file open, another process
        # may change it, and the next store must read it afresh.
        self._catalog = _Catalog()
        try:
            await self._worker.run(self._conn.close)
        finally:
            self._worker.close()

    @property
    def native(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection (owned by the store's worker thread: read with it while
        no store call is running; write through the store)."""
        return self._conn

    async def _run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        if self._closed:
            raise StoreError("the DuckDB time-series store is closed")
        try:
            return await self._worker.run(fn, *args, **kwargs)
        except MultistoreError:
            raise
        except duckdb.Error as exc:
            raise duckdb_error(exc) from exc

    async def write_many(self, points: Iterable[Point]) -> None:
        batch, kinds = check_batch(points)
        if batch:
            await self._run(self._write, batch, kinds)

    async def query(
        self,
        measurement: str,
        *,
        start: datetime,
        end: datetime,
        tags: Mapping[str, str] | None = None,
        fields: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[Point]:
        return await self._run(
            self._query, *check_query(measurement, start, end, tags, fields, limit)
        )

    async def aggregate(
        self,
        measurement: str,
        field: str,
        *,
        fn: str,
        every: timedelta,
        start: datetime,
        end: datetime,
        tags: Mapping[str, str] | None = None,
        group_by: Sequence[str] | None = None,
    ) -> list[Window]:
        checked = check_aggregate(measurement, field, fn, every, start, end, tags, group_by)
        return await self._run(self._aggregate, *checked)

    async def retention(
        self, older_than: timedelta | datetime, measurement: str | None = None
    ) -> None:
        await self._run(self._retention, *check_retention(older_than, measurement))

    async def measurements(self) -> list[str]:
        return await self._run(self._measurements)

    async def drop_measurement(self, measurement: str) -> None:
        await self._run(self._drop, check_measurement(measurement))


def _pick(vf: Any, vi: Any, vb: Any, vs: Any) -> FieldValue:
    if vf is not None:
        return float(vf)
    if vi is not None:
        return int(vi)
    if vb is not None:
        return bool(vb)
    return str(vs)


def _value_sql(agg: Agg) -> tuple[str, list[Any]]:
    """The SQL of one window's value (over ``x``, or the sorted list ``l``)."""
    if agg.name == "mean":
        return "CAST(sum(x) AS DOUBLE) / count(x)", []
    if agg.name in ("min", "max", "sum"):
        return f"CAST({agg.name}(x) AS DOUBLE)", []
    if agg.name == "count":
        return "CAST(count(x) AS DOUBLE)", []
    if agg.name == "median":
        return (
            "CASE WHEN len(l) % 2 = 1 THEN CAST(l[len(l) // 2 + 1] AS DOUBLE) "
            "ELSE CAST(l[len(l) // 2] AS DOUBLE) "
            "+ CAST(l[len(l) // 2 + 1] - l[len(l) // 2] AS DOUBLE) / 2 END",
            [],
        )
    # Nearest rank, in the same floating-point steps as InfluxDB's Go code:
    # floor(float64(n) * pct / 100.0 + 0.5), 1-based here.
    rank = (
        "CAST(floor(CAST(len(l) AS DOUBLE) * CAST(? AS DOUBLE) / CAST(100 AS DOUBLE) "
        "+ CAST(0.5 AS DOUBLE)) AS BIGINT)"
    )
    return (
        f"CASE WHEN {rank} BETWEEN 1 AND len(l) THEN CAST(l[{rank}] AS DOUBLE) END",
        [agg.percentile, agg.percentile],
    )
