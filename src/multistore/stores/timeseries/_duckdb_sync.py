"""The embedded time-series backend for sync code: the DuckDB work of the async store
(:class:`~multistore.stores.timeseries._duckdb.DuckDBWork`: schema, catalog, writes,
queries, housekeeping) run on the calling thread, under the store's lock, instead of
on a worker thread. Same URL, file layout and semantics."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import ParamSpec, Self, TypeVar

import duckdb

from multistore.errors import MultistoreError, StoreError
from multistore.stores.timeseries._duckdb import (
    DuckDBWork,
    _Catalog,
    check_retention,
    duckdb_error,
    open_duckdb,
)
from multistore.stores.timeseries._points import Point, Window, check_batch
from multistore.stores.timeseries._query import check_aggregate, check_measurement, check_query
from multistore.stores.timeseries._sync_api import SyncTimeSeriesStore
from multistore.urls import StoreURL

__all__ = ["SyncDuckDBTimeSeriesStore"]

P = ParamSpec("P")
T = TypeVar("T")


class SyncDuckDBTimeSeriesStore(DuckDBWork, SyncTimeSeriesStore):
    """Time series in a DuckDB file, for sync code; threads may share it (one call at
    a time)."""

    def __init__(self, url: StoreURL, conn: duckdb.DuckDBPyConnection, catalog: _Catalog) -> None:
        self.url = url
        self._conn = conn
        self._catalog = catalog
        self._lock = threading.RLock()
        self._closed = False

    @classmethod
    def open(cls, url: StoreURL) -> Self:
        return cls(url, *open_duckdb(url))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._catalog = _Catalog()  # see the async store's close
            self._conn.close()

    @property
    def native(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection (read with it while no store call is running)."""
        return self._conn

    def _run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._lock:
            if self._closed:
                raise StoreError("the DuckDB time-series store is closed")
            try:
                return fn(*args, **kwargs)
            except MultistoreError:
                raise
            except duckdb.Error as exc:
                raise duckdb_error(exc) from exc

    def write_many(self, points: Iterable[Point]) -> None:
        batch, kinds = check_batch(points)
        if batch:
            self._run(self._write, batch, kinds)

    def query(
        self,
        measurement: str,
        *,
        start: datetime,
        end: datetime,
        tags: Mapping[str, str] | None = None,
        fields: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[Point]:
        return self._run(self._query, *check_query(measurement, start, end, tags, fields, limit))

    def aggregate(
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
        return self._run(self._aggregate, *checked)

    def retention(self, older_than: timedelta | datetime, measurement: str | None = None) -> None:
        self._run(self._retention, *check_retention(older_than, measurement))

    def measurements(self) -> list[str]:
        return self._run(self._measurements)

    def drop_measurement(self, measurement: str) -> None:
        self._run(self._drop, check_measurement(measurement))
