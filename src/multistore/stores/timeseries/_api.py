"""The time-series interface: points with tags and fields, range queries, windowed
aggregates, downsampling and retention.

The semantics are InfluxDB 1.x's, because that is what the server backend speaks;
the embedded DuckDB backend implements the same, and one conformance suite holds
both to it:

- A point is identified by (measurement, tags, time). Writing a point that exists
  merges its fields into the stored ones (a field written again is replaced).
- ``write_many`` checks the whole batch first (values, names, field types against
  each other and against what is stored) and writes nothing when one point is bad.
- Field types stick: the first value of a field fixes its type (float, integer,
  boolean, string); a later value of another type is an
  :class:`~multistore.errors.InvalidValueError`. ``retention`` does not forget the
  types (InfluxDB keeps them in its shards); ``drop_measurement`` does.
- Queries read ``start <= time < end``. A measurement without points is missing:
  ``query`` and ``aggregate`` raise :class:`~multistore.errors.NotFoundError`.
- Results come ordered by time, then by the sorted tag pairs.
- Aggregates: see :mod:`multistore.stores.timeseries._query` for the exact rules
  (epoch-aligned windows, empty windows left out, nearest-rank percentiles).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import ClassVar

from multistore.errors import InvalidQueryError
from multistore.stores._base import Store
from multistore.stores._limits import short_repr
from multistore.stores.timeseries._points import FieldValue, Point, Window, check_name
from multistore.stores.timeseries._query import check_measurement, parse_fn

__all__ = ["TimeSeriesStore", "check_downsample", "window_points"]


def check_downsample(
    source_measurement: str,
    target_measurement: str,
    field: str,
    fn: str,
    target_field: str | None,
) -> tuple[str, str]:
    """``downsample``'s checks: the target measurement and the target field's key."""
    source = check_measurement(source_measurement)
    target = check_name(
        target_measurement, "target measurement", error=InvalidQueryError, measurement=True
    )
    if source == target:
        raise InvalidQueryError(
            f"downsample into the source measurement {short_repr(source)} would overwrite it; "
            "pick another target measurement"
        )
    parse_fn(fn)
    name = check_name(
        target_field if target_field is not None else field,
        "target field key",
        error=InvalidQueryError,
        key=True,
    )
    return target, name


def window_points(windows: Sequence[Window], target: str, name: str) -> list[Point]:
    """One point per window with a value: time = window start, tags = the window's."""
    points = []
    for window in windows:
        if window.value is None:
            continue
        values: dict[str, FieldValue] = {name: float(window.value)}
        points.append(Point(target, dict(window.tags), values, window.start))
    return points


class TimeSeriesStore(Store, abc.ABC):
    """A time-series store: InfluxDB-like points, range queries and windowed aggregates."""

    model: ClassVar[str] = "timeseries"

    async def write(self, point: Point) -> None:
        """Store one point (merging its fields into a stored point with the same
        measurement, tags and time)."""
        await self.write_many([point])

    @abc.abstractmethod
    async def write_many(self, points: Iterable[Point]) -> None:
        """Store a batch of points: all of them, or none when one is invalid."""

    @abc.abstractmethod
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
        """Points of ``measurement`` with ``start <= time < end``, ordered by time.

        ``tags`` keeps points whose tags equal every given pair; ``fields`` keeps only
        those fields (and the points that have at least one of them); ``limit`` returns
        the first ``limit`` points.
        """

    @abc.abstractmethod
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
        """``fn`` of ``field`` per epoch-aligned window of length ``every``, per group of
        the ``group_by`` tags; windows without a value are left out.

        ``fn`` is ``mean``, ``min``, ``max``, ``sum``, ``count``, ``median`` or ``pNN``
        (nearest-rank percentile, e.g. ``p95``).
        """

    async def downsample(
        self,
        source_measurement: str,
        target_measurement: str,
        field: str,
        *,
        fn: str,
        every: timedelta,
        start: datetime,
        end: datetime,
        tags: Mapping[str, str] | None = None,
        group_by: Sequence[str] | None = None,
        target_field: str | None = None,
    ) -> int:
        """Write one point per window of :meth:`aggregate` into ``target_measurement``
        (time = window start, tags = the window's group tags, field = ``target_field``
        or ``field``, a float); the number of points written."""
        target, name = check_downsample(
            source_measurement, target_measurement, field, fn, target_field
        )
        windows = await self.aggregate(
            source_measurement,
            field,
            fn=fn,
            every=every,
            start=start,
            end=end,
            tags=tags,
            group_by=group_by,
        )
        points = window_points(windows, target, name)
        await self.write_many(points)
        return len(points)

    @abc.abstractmethod
    async def retention(
        self, older_than: timedelta | datetime, measurement: str | None = None
    ) -> None:
        """Delete the points older than a moment (a datetime, or now minus a timedelta),
        of one measurement or of all."""

    @abc.abstractmethod
    async def measurements(self) -> list[str]:
        """The names of the measurements that hold points, sorted."""

    @abc.abstractmethod
    async def drop_measurement(self, measurement: str) -> None:
        """Delete a measurement with its points and field types (no error when missing)."""
