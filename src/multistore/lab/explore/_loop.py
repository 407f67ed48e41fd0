"""An asyncio event loop on virtual time, whose idle moments belong to a scheduler.

The loop runs callbacks, tasks and timers as asyncio always does, but ``loop.time()``
is a number the loop moves itself: when nothing is ready to run, it first asks its
``on_idle`` callback (the explorer's scheduler) whether it lets an actor take its next
step; if not, the clock jumps straight to the next timer instead of sleeping. A run
therefore takes no real time for its timeouts and leases, and, with every store call
made inline, depends on nothing but the choices of the scheduler: a seed replays it.

Real file descriptors still work (the self-pipe that ``call_soon_threadsafe`` uses, a
socket now and then): they are polled without blocking before each idle decision.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["DeadlockError", "VirtualTimeLoop"]

#: Called when the loop is idle with the time to the next timer (None: no timer). True
#: when it made something ready (the loop then runs it); False lets the clock move on.
IdleHook = Callable[[float | None], bool]

#: The real clock, taken before the explorer replaces ``time.monotonic`` for a run.
_monotonic = time.monotonic


class DeadlockError(RuntimeError):
    """Nothing can ever run again: no ready callback, no timer, no actor at a step."""


class _Selector(selectors.BaseSelector):
    """A real selector whose idle waits go to the loop first: on virtual time they never
    block; on real time the loop blocks when the scheduler had nothing to release."""

    def __init__(self, idle: Callable[[float | None], bool]) -> None:
        self._real = selectors.DefaultSelector()
        self._idle = idle

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if self._idle(timeout):
            return []
        return self._real.select(min(timeout, 0.05) if timeout is not None else 0.05)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``asyncio.SelectorEventLoop`` with a virtual clock and an idle hook.

    With ``virtual=False`` the clock is the real one and an idle loop that the hook
    did not wake waits for I/O as usual (for real database servers: the scheduler
    then orders and faults the calls it instruments, but cannot replay I/O timing)."""

    def __init__(self, on_idle: IdleHook, *, start: float = 0.0, virtual: bool = True) -> None:
        self._now = start
        self._on_idle = on_idle
        self.virtual = virtual
        self._real_clock = _monotonic
        super().__init__(selector=_Selector(self._idle))

    def time(self) -> float:
        if not self.virtual:
            return self._real_clock()
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (timers due by then fire at the next turn)."""
        if seconds > 0 and self.virtual:
            self._now += seconds

    def next_timer(self) -> float | None:
        """When the earliest pending timer is due (None: no timer)."""
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        live = [handle.when() for handle in scheduled if not handle.cancelled()]
        return min(live) if live else None

    def _idle(self, timeout: float | None) -> bool:
        if self._on_idle(timeout):
            return True
        if not self.virtual:
            return False  # the selector waits for I/O or the next timer
        due = self.next_timer()
        if due is None:
            raise DeadlockError("no task can run again: nothing is ready, no timer is pending")
        self._now = max(self._now, due)
        return True
