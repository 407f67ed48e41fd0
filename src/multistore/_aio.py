"""Stopping a background task for sure.

A cancellation can be lost: on Python 3.11 ``asyncio.wait_for`` returns its result
instead of raising when the cancel comes just as the awaited call finishes, and drivers
use it inside every call (redis-py for each command it sends). A heartbeat loop that
loses the one cancel of its owner's ``close()`` goes on forever, and a ``close()`` that
awaits it with no bound never returns. :func:`stop_task` cancels again until the task
ends, within a bound.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["RECANCEL_EVERY", "stop_task"]

#: Seconds between the cancellations of a task that has not ended yet.
RECANCEL_EVERY = 0.5


async def stop_task(task: asyncio.Task[Any], bound: float) -> None:
    """Cancel ``task`` and wait for it to end, cancelling it again every
    :data:`RECANCEL_EVERY` seconds, for at most ``bound`` seconds (a task still running
    then is left to end on its own). The task's own error, if it ended with one, is
    raised; the caller's cancellation propagates, and the task is still cancelled
    again until it ends or the bound passes (a caller cancelled while it stops a
    heartbeat must not leave that heartbeat running)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    again: asyncio.TimerHandle | None = None

    def cancel() -> None:
        nonlocal again
        again = None
        if not task.done() and loop.time() < deadline:
            task.cancel()
            again = loop.call_later(RECANCEL_EVERY, cancel)

    cancel()
    await asyncio.wait({task}, timeout=max(bound, 0))
    if again is not None:
        again.cancel()
    if task.done() and not task.cancelled() and (error := task.exception()) is not None:
        raise error
