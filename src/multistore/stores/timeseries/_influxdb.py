"""The server time-series backend: InfluxDB 1.x over HTTP (InfluxQL), through the
``influxdb`` client, whose blocking calls run on a :class:`~multistore.stores._worker.Worker`.

URL: ``influxdb://[user:password@]host[:8086]/database``. Options:

- ``create`` (default true): a write to a database that does not exist creates it
  (``CREATE DATABASE``); with ``create=false`` that write raises
  :class:`~multistore.errors.NotFoundError`. Reads treat a missing database as empty.
- ``timeout`` (seconds, default 5) for an answer, ``connect_timeout`` (default
  ``min(2, timeout)``) for a connection; ``ssl`` for HTTPS.

Writes are line protocol encoded by :mod:`._influxql` (the client's encoder doubles
backslashes). Field types are checked before a batch is sent, against a cache of
``SHOW FIELD KEYS`` that is refreshed whenever a batch names a field the cache does
not know (or contradicts it), so a type conflict is refused with nothing written,
as on DuckDB. The cache also remembers types after ``retention`` deleted every point
of a measurement, which InfluxDB keeps in its shards but no longer lists.
Query values travel as bound parameters; identifiers are quoted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, ParamSpec, Self, TypeVar

import requests
from influxdb import InfluxDBClient
from influxdb.exceptions import InfluxDBClientError, InfluxDBServerError

from multistore.errors import (
    InvalidURLError,
    InvalidValueError,
    MultistoreError,
    NotFoundError,
    Outcome,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from multistore.stores._limits import short_repr
from multistore.stores._worker import Worker
from multistore.stores.timeseries._api import TimeSeriesStore
from multistore.stores.timeseries._influxql import ident, line, time_ns
from multistore.stores.timeseries._points import (
    FieldValue,
    Point,
    Window,
    check_batch,
    check_kinds,
    from_us,
    make_point,
)
from multistore.stores.timeseries._query import (
    Agg,
    check_aggregate,
    check_measurement,
    check_query,
    coerce,
    point_sort_key,
    retention_bound,
)
from multistore.urls import StoreURL

__all__ = ["InfluxDBTimeSeriesStore"]

P = ParamSpec("P")
T = TypeVar("T")

#: A batch is sent in requests of at most this many lines or bytes.
_CHUNK_LINES: Final = 5_000
_CHUNK_BYTES: Final = 4_000_000


class InfluxDBTimeSeriesStore(TimeSeriesStore):
    """Time series in an InfluxDB 1.x database."""

    def __init__(
        self, url: StoreURL, client: InfluxDBClient, worker: Worker, database: str
    ) -> None:
        self.url = url
        self._client = client
        self._worker = worker
        self._database = database
        self._create = bool(url.option("create", True))
        self._address = f"{url.host}:{url.port}"
        self._fields: dict[str, dict[str, str]] = {}
        self._closed = False

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        database = url.database
        if not database:
            raise InvalidURLError(
                "an influxdb:// URL names its database, e.g. influxdb://127.0.0.1:8086/metrics"
            )
        timeout = url.float_option("timeout", 5.0)
        connect_timeout = url.float_option("connect_timeout", min(2.0, timeout))
        ssl = bool(url.option("ssl", False))
        client = InfluxDBClient(
            host=url.host,
            port=url.port,
            username=url.username,
            password=url.password,
            database=database,
            ssl=ssl,
            verify_ssl=ssl,
            timeout=(connect_timeout or None, timeout or None),
            # Two attempts: a keep-alive connection that a restarted server closed
            # fails once and is replaced. Every request here is idempotent.
            retries=2,
        )
        store = cls(url, client, Worker("influxdb"), database)
        try:
            await store._call("ping", client.ping)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._worker.run(self._client.close)
        finally:
            self._worker.close()

    @property
    def native(self) -> InfluxDBClient:
        """The ``influxdb.InfluxDBClient`` (blocking; its default database is the URL's)."""
        return self._client

    # -- plumbing ------------------------------------------------------------------

    async def _call(self, what: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        if self._closed:
            raise StoreError("the InfluxDB time-series store is closed")
        try:
            return await self._worker.run(fn, *args, **kwargs)
        except MultistoreError:
            raise
        except Exception as exc:
            raise self._error(exc, what) from exc

    def _error(self, exc: Exception, what: str) -> MultistoreError:
        where = f"InfluxDB at {self._address}"
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return StoreUnavailableError(
                f"{where} did not accept a connection in time ({what})", outcome=Outcome.DEFINITE
            )
        if isinstance(exc, requests.exceptions.Timeout):
            return StoreTimeoutError(f"{where} did not answer in time ({what})")
        if isinstance(exc, requests.exceptions.ConnectionError):
            if _refused(exc):
                return StoreUnavailableError(
                    f"cannot reach {where} ({what}): connection refused", outcome=Outcome.DEFINITE
                )
            return StoreUnavailableError(
                f"lost the connection to {where} ({what}): {type(exc).__name__}",
                outcome=Outcome.INDETERMINATE,
            )
        if isinstance(exc, InfluxDBServerError):
            return StoreError(f"{where} failed ({what}): {_message(exc)}")
        if isinstance(exc, InfluxDBClientError):
            if exc.code in (401, 403):
                return StoreError(
                    f"{where} refused the credentials ({what}): {_message(exc)}",
                    outcome=Outcome.DEFINITE,
                )
            return StoreError(f"{where} rejected {what}: {_message(exc)}")
        return StoreError(f"{where}: {what} failed: {short_repr(exc)}")

    async def _influxql(
        self, what: str, query: str, binds: dict[str, str] | None = None, *, post: bool = False
    ) -> list[dict[str, Any]]:
        """Run one statement; its series (none when the database does not exist)."""
        result = await self._call(
            what,
            self._client.query,
            query,
            bind_params=binds or None,
            epoch="u",
            database=self._database,
            raise_errors=False,
            method="POST" if post else "GET",
        )
        raw: dict[str, Any] = result.raw
        error = raw.get("error")
        if error:
            if str(error).startswith("database not found"):
                return []
            raise StoreError(f"InfluxDB at {self._address} rejected {what}: {error}")
        series: list[dict[str, Any]] = raw.get("series") or []
        return series

    async def _stored_kinds(self, measurements: list[str]) -> dict[str, dict[str, str]]:
        """``SHOW FIELD KEYS`` of some measurements (one query; {} for those without
        points)."""
        if len(measurements) == 1:
            text = f"SHOW FIELD KEYS FROM {ident(measurements[0])}"
        else:
            text = "SHOW FIELD KEYS"  # every measurement of the database at once
        series = await self._influxql("SHOW FIELD KEYS", text)
        kinds: dict[str, dict[str, str]] = {m: {} for m in measurements}
        for item in series:
            found = kinds.get(str(item.get("name")))
            if found is not None:
                for name, kind in item.get("values") or []:
                    found.setdefault(str(name), str(kind))
        return kinds

    async def _refresh(self, measurement: str) -> tuple[dict[str, str], bool]:
        """Merge the server's field types into the cache; also whether it has points."""
        server = (await self._stored_kinds([measurement]))[measurement]
        merged = {**self._fields.get(measurement, {}), **server}
        self._fields[measurement] = merged
        return merged, bool(server)

    async def _must_exist(self, measurement: str) -> None:
        _, exists = await self._refresh(measurement)
        if not exists:
            raise NotFoundError(f"measurement {short_repr(measurement)} not found")

    # -- writes --------------------------------------------------------------------

    async def write_many(self, points: Iterable[Point]) -> None:
        batch, kinds = check_batch(points)
        if not batch:
            return
        stale = [
            m
            for m, wanted in kinds.items()
            if any(self._fields.get(m, {}).get(k) != v for k, v in wanted.items())
        ]
        if stale:  # unknown fields or a conflict: ask the server
            for measurement, server in (await self._stored_kinds(stale)).items():
                self._fields[measurement] = {**self._fields.get(measurement, {}), **server}
        for measurement, wanted in kinds.items():
            check_kinds(measurement, wanted, self._fields.get(measurement, {}))
        chunk: list[str] = []
        size = 0
        for point in batch:
            text = line(point)
            chunk.append(text)
            size += len(text)
            if len(chunk) >= _CHUNK_LINES or size >= _CHUNK_BYTES:
                await self._send(chunk)
                chunk, size = [], 0
        if chunk:
            await self._send(chunk)
        for measurement, wanted in kinds.items():
            self._fields.setdefault(measurement, {}).update(wanted)

    async def _send(self, lines: list[str]) -> None:
        params = {"db": self._database, "precision": "u"}
        for attempt in (1, 2):
            try:
                await self._worker_write(lines, params)
                return
            except _WriteRejected as rejected:
                missing = rejected.code == 404 and "database not found" in rejected.message
                if not missing:
                    raise InvalidValueError(
                        f"InfluxDB rejected the write ({rejected.message}); the points of "
                        "the batch that it accepted were stored",
                        outcome=Outcome.INDETERMINATE,
                    ) from None
                if not self._create or attempt == 2:
                    raise NotFoundError(
                        f"InfluxDB database {short_repr(self._database)} does not exist"
                        + ("" if self._create else " (create=false)")
                    ) from None
            await self._influxql(
                f"CREATE DATABASE {short_repr(self._database)}",
                f"CREATE DATABASE {ident(self._database)}",
                post=True,
            )

    async def _worker_write(self, lines: list[str], params: dict[str, str]) -> None:
        try:
            await self._call("write", self._client.write, lines, params=params, protocol="line")
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, InfluxDBClientError) and cause.code in (400, 404):
                raise _WriteRejected(cause.code, _message(cause)) from None
            raise

    # -- reads ---------------------------------------------------------------------

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
        name, start_us, end_us, tag_filter, selected, count = check_query(
            measurement, start, end, tags, fields, limit
        )
        columns = "*" if selected is None else ", ".join(f"{ident(f)}::field" for f in selected)
        where, binds = _where(start_us, end_us, tag_filter)
        # LIMIT applies per series; the first `count` points overall are among them.
        text = f"SELECT {columns} FROM {ident(name)} WHERE {where} GROUP BY * ORDER BY time ASC"
        if count is not None:
            text += f" LIMIT {count}"
        series = await self._influxql(f"query of {short_repr(name)}", text, binds)
        if not series:
            await self._must_exist(name)
            return []
        kinds = self._fields.get(name, {})
        found: list[tuple[tuple[int, tuple[tuple[str, str], ...]], Point]] = []
        for item in series:
            point_tags = _tags(item)
            names = item["columns"][1:]
            for row in item.get("values") or []:
                values: dict[str, FieldValue] = {
                    key: coerce(kinds.get(key), value)
                    for key, value in zip(names, row[1:], strict=True)
                    if value is not None
                }
                if values:
                    us = int(row[0])
                    fields_sorted = dict(sorted(values.items()))
                    point = make_point(name, dict(point_tags), fields_sorted, from_us(us))
                    found.append((point_sort_key(point_tags, us), point))
        found.sort(key=lambda entry: entry[0])
        if count is not None:
            found = found[:count]
        return [point for _, point in found]

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
        name, key, agg, every_us, start_us, end_us, tag_filter, groups = check_aggregate(
            measurement, field, fn, every, start, end, tags, group_by
        )
        kind = self._fields.get(name, {}).get(key)
        if kind is None:
            kinds, exists = await self._refresh(name)
            kind = kinds.get(key)
            if kind is None:
                if not exists:
                    raise NotFoundError(f"measurement {short_repr(name)} not found")
                raise NotFoundError(
                    f"field {short_repr(key)} not found in measurement {short_repr(name)}"
                )
        agg.check_kind(name, key, kind)
        where, binds = _where(start_us, end_us, tag_filter)
        group = "".join(f", {ident(g)}" for g in groups)
        text = (
            f"SELECT {_call_sql(agg, key)} FROM {ident(name)} WHERE {where} "
            f"GROUP BY time({every_us}u){group} fill(none)"
        )
        series = await self._influxql(
            f"{agg.label} of {short_repr(name)}.{short_repr(key)}", text, binds
        )
        if not series:
            await self._must_exist(name)
            return []
        windows: list[tuple[tuple[int, tuple[tuple[str, str], ...]], Window]] = []
        for item in series:
            window_tags = _tags(item)
            for row in item.get("values") or []:
                us, value = row[0], row[1]
                if value is None:
                    continue
                window = Window(from_us(int(us)), float(value), dict(window_tags))
                windows.append((point_sort_key(window_tags, int(us)), window))
        windows.sort(key=lambda entry: entry[0])
        return [window for _, window in windows]

    # -- housekeeping --------------------------------------------------------------

    async def retention(
        self, older_than: timedelta | datetime, measurement: str | None = None
    ) -> None:
        bound = retention_bound(older_than, datetime.now(UTC))
        target = "" if measurement is None else f"FROM {ident(check_measurement(measurement))} "
        await self._influxql(
            "retention delete", f"DELETE {target}WHERE time < {time_ns(bound)}", post=True
        )

    async def measurements(self) -> list[str]:
        series = await self._influxql("SHOW MEASUREMENTS", "SHOW MEASUREMENTS")
        names = [str(row[0]) for item in series for row in item.get("values") or []]
        return sorted(names)

    async def drop_measurement(self, measurement: str) -> None:
        name = check_measurement(measurement)
        await self._influxql(
            f"DROP MEASUREMENT {short_repr(name)}", f"DROP MEASUREMENT {ident(name)}", post=True
        )
        self._fields.pop(name, None)


class _WriteRejected(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _where(start_us: int, end_us: int, tags: dict[str, str]) -> tuple[str, dict[str, str]]:
    where = f"time >= {time_ns(start_us)} AND time < {time_ns(end_us)}"
    binds: dict[str, str] = {}
    for i, (key, value) in enumerate(tags.items()):
        where += f" AND {ident(key)}::tag = $t{i}"
        binds[f"t{i}"] = value
    return where, binds


def _call_sql(agg: Agg, field: str) -> str:
    column = f"{ident(field)}::field"
    if agg.percentile is not None:
        # InfluxDB 1.6 drops every window of a series when PERCENTILE has no value in
        # its first window (too few points for the rank); a second aggregate in the
        # same SELECT keeps each window as a row, with a null percentile where empty.
        return f"percentile({column}, {agg.percentile!r}), count({column})"
    return f"{agg.name}({column})"  # mean, min, max, sum, count, median: same names


def _tags(series: dict[str, Any]) -> dict[str, str]:
    """A series' tags; InfluxDB reports a tag a point does not carry as ''."""
    return {str(k): str(v) for k, v in (series.get("tags") or {}).items() if v}


def _message(exc: InfluxDBClientError | InfluxDBServerError) -> str:
    content = getattr(exc, "content", None) or str(exc)
    if isinstance(content, bytes):
        content = content.decode(errors="replace")
    try:
        parsed = json.loads(content)
    except (TypeError, ValueError):
        return str(content).strip()
    if isinstance(parsed, dict) and "error" in parsed:
        return str(parsed["error"])
    return str(content).strip()


def _refused(exc: BaseException) -> bool:
    """True when the connection was never made (so nothing was sent)."""
    seen: set[int] = set()
    stack: list[object] = [exc]
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ConnectionRefusedError) or type(item).__name__ == (
            "NewConnectionError"
        ):
            return True
        stack.extend([item.__cause__, item.__context__, *item.args, getattr(item, "reason", None)])
    return False
