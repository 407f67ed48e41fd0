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
    raised; the caller's cancellation propagates."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            return
        task.cancel()
        await asyncio.wait({task}, timeout=min(left, RECANCEL_EVERY))
    if not task.cancelled() and (error := task.exception()) is not None:
        raise error
