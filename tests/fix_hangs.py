"""Before pytest-timeout stops a hung test, print what its event loop waits for.

pytest-timeout prints the threads' stacks, which for an asyncio test only shows the
main thread in the selector. A few seconds before the test's timeout runs out (it
counts from the start of set-up, as pytest-timeout's does), this prints, to the real
stderr, the stack of every task of every running event loop and the loop's pending
timers: the coroutine that waits, and on what.
"""

from __future__ import annotations

import asyncio
import gc
import io
import sys
import threading
from collections.abc import Generator

import pytest

#: Print this long before the timeout (or at half the timeout, if shorter).
LEAD = 10.0


def _timeout(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    value = item.config.getoption("timeout", None) or item.config.getini("timeout")
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def _describe(loop: asyncio.AbstractEventLoop) -> str:
    out = io.StringIO()
    for task in asyncio.all_tasks(loop):
        print(f"--- {task!r}", file=out)
        task.print_stack(file=out)
    now = loop.time()
    timers = getattr(loop, "_scheduled", [])
    print(
        "--- timers (seconds from now): "
        + ", ".join(f"{h.when() - now:.2f} {h}" for h in timers if not h.cancelled()),
        file=out,
    )
    return out.getvalue()


def _ask(loop: asyncio.AbstractEventLoop) -> str | None:
    """``_describe(loop)``, run on the loop's own thread; None if it does not run."""
    text: list[str] = []
    done = threading.Event()

    def describe() -> None:
        try:
            text.append(_describe(loop))
        finally:
            done.set()

    try:
        loop.call_soon_threadsafe(describe)
    except RuntimeError:  # closed meanwhile
        return ""
    return (text[0] if text else "") if done.wait(5) else None


def dump_event_loops(title: str) -> None:
    """Print the tasks of every running event loop (called off the loop's thread)."""
    err = sys.__stderr__
    if err is None:
        return
    print(f"\n===== asyncio tasks: {title} =====", file=err, flush=True)
    loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)]
    for loop in loops:
        if loop.is_running() and not loop.is_closed():
            text = _ask(loop)
            if text is None:
                text = "(the loop did not run for 5 s: it is blocked, see the thread stacks)"
            print(text, file=err, flush=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    timeout = _timeout(item)
    timer = None
    if timeout > 0:
        at = max(timeout - LEAD, timeout / 2)
        timer = threading.Timer(at, dump_event_loops, args=(item.nodeid,))
        timer.daemon = True
        timer.start()
    try:
        return (yield)
    finally:
        if timer is not None:
            timer.cancel()
