"""The time-series interface for sync code: the operations and semantics of
:class:`multistore.stores.timeseries.TimeSeriesStore`, as plain methods."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import ClassVar

from multistore.stores._sync_base import SyncStore
from multistore.stores.timeseries._api import check_downsample, window_points
from multistore.stores.timeseries._points import Point, Window

__all__ = ["SyncTimeSeriesStore"]


class SyncTimeSeriesStore(SyncStore, abc.ABC):
    """A time-series store for sync code; see
    :class:`multistore.stores.timeseries.TimeSeriesStore`."""

    model: ClassVar[str] = "timeseries"

    def write(self, point: Point) -> None:
        """Write one point (merging its fields into a stored point with the same
        measurement, tags and time)."""
        self.write_many([point])

    @abc.abstractmethod
    def write_many(self, points: Iterable[Point]) -> None:
        """Write a batch: all of it, or nothing when one point is bad."""

    @abc.abstractmethod
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
        """Points with ``start <= time < end``, by time then tags."""

    @abc.abstractmethod
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
        """One value per window of ``every`` (and per group)."""

    def downsample(
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
        """Write one point per window of :meth:`aggregate` into ``target_measurement``;
        the number of points written."""
        target, name = check_downsample(
            source_measurement, target_measurement, field, fn, target_field
        )
        windows = self.aggregate(
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
        self.write_many(points)
        return len(points)

    @abc.abstractmethod
    def retention(self, older_than: timedelta | datetime, measurement: str | None = None) -> None:
        """Delete points older than ``older_than`` (of one measurement, or all)."""

    @abc.abstractmethod
    def measurements(self) -> list[str]:
        """The measurements that have points, sorted."""

    @abc.abstractmethod
    def drop_measurement(self, measurement: str) -> None:
        """Delete a measurement with its points and field types."""
