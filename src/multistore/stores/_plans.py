"""Drive a plan: a generator that yields the I/O it needs (a driver primitive, a step
on a connection), receives each result (or has its error thrown in) and returns the
answer. The protocol lives in the generator, free of I/O; :func:`drive` does each
step on this thread, :func:`drive_async` awaits each one (the split of psycopg's
``generators.py`` and ``waiting.py``). The sync and async stores share their
protocols this way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

__all__ = ["drive", "drive_async"]

S = TypeVar("S")
T = TypeVar("T")


def drive(plan: Generator[S, Any, T], run: Callable[[S], Any]) -> T:
    """Run ``plan`` to its end, doing each step with ``run``."""
    try:
        step = next(plan)
        while True:
            try:
                result = run(step)
            except BaseException as exc:
                step = plan.throw(exc)
            else:
                step = plan.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


async def drive_async(plan: Generator[S, Any, T], run: Callable[[S], Awaitable[Any]]) -> T:
    """Run ``plan`` to its end, awaiting ``run`` of each step."""
    try:
        step = next(plan)
        while True:
            try:
                result = await run(step)
            except BaseException as exc:
                step = plan.throw(exc)
            else:
                step = plan.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value
