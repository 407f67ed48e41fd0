"""Recording a history: every operation's invocation and completion, as Jepsen does.

A :class:`HistoryRecorder` hands out events with monotonic nanosecond times (since the
recorder was made) to concurrent asyncio workers; as they all run on one event loop,
events are appended, indexed and timed in one order. :meth:`HistoryRecorder.call`
wraps one operation and classifies its outcome:

- it returned: ``ok`` (a read's value is the returned value);
- it raised a :class:`~multistore.errors.MultistoreError` whose outcome is *definite*:
  ``fail`` (it did not happen);
- anything else — an indeterminate error, a timeout, a cancellation, a bug: ``info``
  (it may have happened). The process is then crashed: :class:`Processes` gives the
  worker a fresh process id, so one process never has two open operations.

The history is written as JSON lines, one event per line (:func:`write_history`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from multistore.core._history import Event, EventType, Value
from multistore.errors import MultistoreError

__all__ = [
    "Completion",
    "HistoryRecorder",
    "Processes",
    "read_history",
    "write_history",
]


@dataclass(frozen=True, slots=True)
class Completion:
    """What :meth:`HistoryRecorder.call` saw: the completion event and any error."""

    event: Event
    error: BaseException | None = None

    @property
    def type(self) -> EventType:
        return self.event.type

    @property
    def value(self) -> Value:
        return self.event.value


class HistoryRecorder:
    """Collects events; ``clock`` returns monotonic nanoseconds (injectable for tests)."""

    def __init__(self, *, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._clock = clock
        self._origin = clock()
        self._events: list[Event] = []
        self._open: dict[int, Event] = {}

    def now(self) -> int:
        """Nanoseconds since the recorder was made."""
        return self._clock() - self._origin

    @property
    def events(self) -> tuple[Event, ...]:
        return tuple(self._events)

    def _append(self, process: int, kind: EventType, f: str, key: str, value: Value) -> Event:
        event = Event(len(self._events), process, kind, f, key, value, self.now())
        self._events.append(event)
        return event

    def invoke(self, process: int, f: str, key: str, value: Value = None) -> Event:
        if process in self._open:
            raise RuntimeError(f"process {process} already has an open operation")
        event = self._append(process, EventType.INVOKE, f, key, value if f == "write" else None)
        self._open[process] = event
        return event

    def complete(self, invocation: Event, kind: EventType, value: Value = None) -> Event:
        if kind is EventType.INVOKE:
            raise ValueError("a completion must be ok, fail or info")
        if self._open.get(invocation.process) is not invocation:
            raise RuntimeError(f"event {invocation.index} is not open")
        del self._open[invocation.process]
        if invocation.f == "write":
            value = invocation.value
        elif kind is not EventType.OK:
            value = None
        return self._append(invocation.process, kind, invocation.f, invocation.key, value)

    async def call(
        self,
        process: int,
        f: str,
        key: str,
        value: Value,
        operation: Callable[[], Awaitable[Value]],
    ) -> Completion:
        """Invoke, await ``operation()``, record the completion and return it.

        Exceptions are recorded, not raised, except cancellation (recorded as ``info``
        and re-raised)."""
        invocation = self.invoke(process, f, key, value)
        try:
            result = await operation()
        except asyncio.CancelledError as exc:
            self.complete(invocation, EventType.INFO)
            raise exc
        except MultistoreError as exc:
            kind = EventType.FAIL if exc.definite else EventType.INFO
            return Completion(self.complete(invocation, kind), exc)
        except Exception as exc:  # a timeout or a bug: we cannot know what happened
            return Completion(self.complete(invocation, EventType.INFO), exc)
        return Completion(self.complete(invocation, EventType.OK, result))


class Processes:
    """Process ids of ``workers`` concurrent workers: worker ``i`` starts as process
    ``i`` and moves to ``i + workers``, ``i + 2*workers`` … after each ``info``."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._current = list(range(workers))

    def __getitem__(self, worker: int) -> int:
        return self._current[worker]

    def crashed(self, worker: int) -> int:
        self._current[worker] += self.workers
        return self._current[worker]


def write_history(events: Iterable[Event], path: str | Path) -> None:
    """Write the events as JSON lines, one per line."""
    with Path(path).open("w", encoding="utf-8") as out:
        for event in events:
            out.write(json.dumps(event.to_dict(), separators=(", ", ": ")) + "\n")


def read_history(path: str | Path) -> list[Event]:
    with Path(path).open(encoding="utf-8") as src:
        return [Event.from_dict(json.loads(line)) for line in src if line.strip()]
