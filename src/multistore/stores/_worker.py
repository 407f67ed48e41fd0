"""Run a blocking driver (sqlite3, tantivy, ladybug, duckdb, PyMySQL, the InfluxDB
client) off the event loop, one call at a time, on a thread of its own.

Drivers of embedded stores are not thread-safe across connections in the ways
asyncio would need, so each store keeps a single worker thread that owns its
connection; calls are queued and run in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["Worker"]

P = ParamSpec("P")
T = TypeVar("T")


class Worker:
    """A single thread that runs blocking calls in submission order."""

    def __init__(self, name: str) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"multistore-{name}"
        )
        self._closed = False

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the worker thread and await its result."""
        if self._closed:
            raise RuntimeError("store is closed")
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *args, **kwargs)
        return await loop.run_in_executor(self._pool, call)

    def run_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run on the worker thread and block for the result (for __del__-free cleanup)."""
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.shutdown(wait=True)
