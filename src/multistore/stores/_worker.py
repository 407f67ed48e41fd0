"""Run a blocking driver (sqlite3, tantivy, ladybug, duckdb, PyMySQL, the InfluxDB
client) off the event loop, one call at a time, on a thread of its own.

Drivers of embedded stores are not thread-safe across connections in the ways
asyncio would need, so each store keeps a single worker thread that owns its
connection; calls are queued and run in order.

The thread takes calls from a :class:`queue.SimpleQueue` and hands each result
back with ``loop.call_soon_threadsafe``. That is about 40% cheaper per call than
``loop.run_in_executor`` (no ``concurrent.futures`` future to chain), which
matters for embedded stores whose operations take microseconds
(``multistore bench stores`` reports the remaining cost of the hop).

The schedule explorer (:mod:`multistore.lab.explore`) sets :attr:`Worker.hooks`: each
new worker then gets a :class:`WorkerHook` that runs its calls instead of a thread
(inline on the event loop for embedded files, so that a seed replays exactly), and
makes each call a step the explorer can reorder, fail or crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import Callable
from typing import Any, ClassVar, ParamSpec, Protocol, TypeVar

__all__ = ["Worker", "WorkerHook"]

P = ParamSpec("P")
T = TypeVar("T")


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class WorkerHook(Protocol):
    """Runs one worker's calls in its place (see the module docstring)."""

    async def run(self, call: Callable[[], T], /) -> T: ...

    def run_sync(self, call: Callable[[], T], /) -> T: ...

    def close(self) -> None: ...


class Worker:
    """A single thread that runs blocking calls in submission order."""

    hooks: ClassVar[Callable[[str], WorkerHook | None] | None] = None
    """Set by the schedule explorer: called with each new worker's name, it returns
    the hook that runs that worker's calls (None: a thread as usual)."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._closed = False
        factory = Worker.hooks
        self._hook = None if factory is None else factory(name)
        self._thread = threading.Thread(target=self._loop, name=f"multistore-{name}", daemon=True)
        if self._hook is None:
            self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            job()

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the worker thread and await its result."""
        if self._closed:
            raise RuntimeError("store is closed")
        if self._hook is not None:
            return await self._hook.run(functools.partial(fn, *args, **kwargs))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def job() -> None:
            try:
                result: Any = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the awaiting coroutine
                outcome: tuple[Any, BaseException | None] = (None, exc)
            else:
                outcome = (result, None)
            # The loop may have closed while we ran: then nobody is waiting.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, *outcome)

        self._queue.put(job)
        return await future

    def run_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run on the worker thread and block for the result (for use outside a loop)."""
        if self._closed:
            raise RuntimeError("store is closed")
        if self._hook is not None:
            return self._hook.run_sync(functools.partial(fn, *args, **kwargs))
        done = threading.Event()
        box: list[tuple[Any, BaseException | None]] = []

        def job() -> None:
            try:
                box.append((fn(*args, **kwargs), None))
            except BaseException as exc:
                box.append((None, exc))
            finally:
                done.set()

        self._queue.put(job)
        done.wait()
        result, error = box[0]
        if error is not None:
            raise error
        return result  # type: ignore[no-any-return]

    def close(self) -> None:
        """Finish queued calls, then stop the thread."""
        if not self._closed:
            self._closed = True
            if self._hook is not None:
                self._hook.close()
                return
            self._queue.put(None)
            if threading.current_thread() is not self._thread:
                self._thread.join()
