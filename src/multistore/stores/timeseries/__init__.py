"""The time-series model: points with tags and fields, range queries, windowed
aggregates, downsampling and retention, with InfluxDB 1.x semantics.

Backends: ``duckdb:///path.duckdb`` (embedded,
:class:`~multistore.stores.timeseries._duckdb.DuckDBTimeSeriesStore`) and
``influxdb://host:8086/db`` (InfluxDB 1.x over HTTP,
:class:`~multistore.stores.timeseries._influxdb.InfluxDBTimeSeriesStore`). Open one
with :func:`multistore.stores.open_store`.
"""

from multistore.stores.timeseries._api import TimeSeriesStore
from multistore.stores.timeseries._points import FieldValue, Point, Window

__all__ = ["FieldValue", "Point", "TimeSeriesStore", "Window"]
