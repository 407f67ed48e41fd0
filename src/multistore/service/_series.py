"""Sensor readings (wide-column) and request latencies (time series).

Readings are the seed's IoT example: a partition per sensor, newest first.

Every request the service answers becomes a point of measurement ``http_requests``
(tags ``route``, ``method``, ``status``; field ``response_time`` in ms). Requests only
queue their point; a background task writes the queue in batches, so a slow metrics
store never slows a request down (points queued past the bound are counted as
dropped, not waited for).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from multistore.errors import InvalidValueError, MultistoreError
from multistore.service._instruments import Instruments
from multistore.service._schema import READINGS
from multistore.stores.timeseries import Point, TimeSeriesStore
from multistore.stores.widecolumn import WideColumnStore

__all__ = ["Readings", "RequestSeries"]

log = logging.getLogger("multistore.service")

MEASUREMENT: Final = "http_requests"
FUNCTIONS: Final = ("mean", "min", "max", "count", "median", "p50", "p90", "p95", "p99")


class Readings:
    def __init__(self, store: WideColumnStore, *, instruments: Instruments) -> None:
        self.store = store
        self.instruments = instruments

    async def setup(self) -> None:
        await self.store.create_table(READINGS, if_not_exists=True)

    async def add(self, sensor_id: str, readings: Sequence[Mapping[str, Any]]) -> int:
        rows = [{"sensor_id": sensor_id, **reading} for reading in readings]
        with self.instruments.store_op("readings", "upsert_many"):
            await self.store.upsert_many(READINGS.name, rows)
        return len(rows)

    async def recent(
        self, sensor_id: str, *, since: datetime | None, limit: int
    ) -> list[dict[str, Any]]:
        where = [] if since is None else [("timestamp", ">", since)]
        with self.instruments.store_op("readings", "select"):
            rows = await self.store.select(
                READINGS.name, {"sensor_id": sensor_id}, where=where, limit=limit
            )
        return [
            {
                "timestamp": row["timestamp"],
                "temperature": row["temperature"],
                "humidity": row["humidity"],
            }
            for row in rows
        ]


class RequestSeries:
    """Request latencies as time-series points, written in batches."""

    def __init__(
        self, store: TimeSeriesStore, *, instruments: Instruments, bound: int = 10_000
    ) -> None:
        self.store = store
        self.instruments = instruments
        self.bound = bound
        self.queue: list[Point] = []
        self.dropped = 0
        self.written = 0
        self._wake = asyncio.Event()

    def record(self, route: str, method: str, status: int, millis: float, at: datetime) -> None:
        if len(self.queue) >= self.bound:
            self.dropped += 1
            return
        self.queue.append(
            Point(
                MEASUREMENT,
                {"route": route, "method": method, "status": str(status)},
                {"response_time": millis},
                at,
            )
        )

    async def flush(self) -> int:
        batch, self.queue = self.queue, []
        if not batch:
            return 0
        try:
            with self.instruments.store_op("metrics", "write_many"):
                await self.store.write_many(batch)
        except MultistoreError as exc:
            log.warning("could not write %d request points: %s", len(batch), exc)
            self.dropped += len(batch)
            return 0
        self.written += len(batch)
        return len(batch)

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            await self.flush()

    async def windows(
        self,
        *,
        fn: str,
        every: timedelta,
        window: timedelta,
        route: str | None,
        now: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """``fn`` of the response time per window of ``every`` over the last ``window``."""
        if fn not in FUNCTIONS:
            raise InvalidValueError(f"fn: {fn!r} is not one of {', '.join(FUNCTIONS)}")
        await self.flush()
        end = now or datetime.now(UTC)
        if MEASUREMENT not in await self.store.measurements():
            return []
        with self.instruments.store_op("metrics", "aggregate"):
            found = await self.store.aggregate(
                MEASUREMENT,
                "response_time",
                fn=fn,
                every=every,
                start=end - window,
                end=end + timedelta(seconds=1),
                tags={"route": route} if route else None,
            )
        return [
            {"start": w.start.isoformat(), "value": None if w.value is None else round(w.value, 3)}
            for w in found
        ]

    async def by_route(self, *, window: timedelta) -> list[dict[str, Any]]:
        """Per route over the last ``window``: request count, p50 and p99 (ms)."""
        await self.flush()
        if MEASUREMENT not in await self.store.measurements():
            return []
        end = datetime.now(UTC) + timedelta(seconds=1)
        found: dict[str, dict[str, Any]] = {}
        for fn in ("count", "p50", "p99"):
            with self.instruments.store_op("metrics", "aggregate"):
                windows = await self.store.aggregate(
                    MEASUREMENT,
                    "response_time",
                    fn=fn,
                    every=window,
                    start=end - window,
                    end=end,
                    group_by=["route"],
                )
            for w in windows:
                route = w.tags.get("route", "?")
                entry = found.setdefault(
                    route, {"route": route, "count": 0.0, "p50": 0.0, "p99": 0.0}
                )
                entry[fn] = (
                    max(entry[fn], w.value or 0.0)
                    if fn != "count"
                    else (entry[fn] + (w.value or 0.0))
                )
        return sorted(found.values(), key=lambda e: -e["count"])
