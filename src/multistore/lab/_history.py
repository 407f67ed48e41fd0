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

The history is written as JSON lines, one event per line, or — for a path ending in
``.edn`` — in Jepsen's EDN format (:func:`write_history`): one operation map per
line, ``{:index 0, :time 1500, :type :invoke, :process 3, :f :write, :value ["k7" 12]}``,
the key and value as a ``[key value]`` tuple as ``jepsen.independent`` writes them, an
``:error`` string on failed and indeterminate completions, and each fault the lab
applied as an ``:info`` operation of the ``:nemesis`` process.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multistore.core._history import Event, EventType, Value
from multistore.errors import MultistoreError

__all__ = [
    "Completion",
    "HistoryRecorder",
    "Processes",
    "edn_lines",
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

    def _append(
        self,
        process: int,
        kind: EventType,
        f: str,
        key: str,
        value: Value,
        error: str | None = None,
    ) -> Event:
        event = Event(len(self._events), process, kind, f, key, value, self.now(), error)
        self._events.append(event)
        return event

    def invoke(self, process: int, f: str, key: str, value: Value = None) -> Event:
        if process in self._open:
            raise RuntimeError(f"process {process} already has an open operation")
        event = self._append(process, EventType.INVOKE, f, key, value if f == "write" else None)
        self._open[process] = event
        return event

    def complete(
        self,
        invocation: Event,
        kind: EventType,
        value: Value = None,
        *,
        error: BaseException | None = None,
    ) -> Event:
        if kind is EventType.INVOKE:
            raise ValueError("a completion must be ok, fail or info")
        if self._open.get(invocation.process) is not invocation:
            raise RuntimeError(f"event {invocation.index} is not open")
        del self._open[invocation.process]
        if invocation.f == "write":
            value = invocation.value
        elif kind is not EventType.OK:
            value = None
        message = None if error is None else _describe(error)
        return self._append(invocation.process, kind, invocation.f, invocation.key, value, message)

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
            self.complete(invocation, EventType.INFO, error=exc)
            raise exc
        except MultistoreError as exc:
            kind = EventType.FAIL if exc.definite else EventType.INFO
            return Completion(self.complete(invocation, kind, error=exc), exc)
        except Exception as exc:  # a timeout or a bug: we cannot know what happened
            return Completion(self.complete(invocation, EventType.INFO, error=exc), exc)
        return Completion(self.complete(invocation, EventType.OK, result))


def _describe(error: BaseException) -> str:
    """An error as one line: its message, or its type when it has none."""
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    if isinstance(error, TimeoutError):
        return "timed out"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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


def write_history(
    events: Iterable[Event],
    path: str | Path,
    *,
    faults: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Write the events as JSON lines, or as Jepsen EDN when ``path`` ends in ``.edn``
    (then with ``faults``, the lab's fault log, as ``:nemesis`` operations)."""
    out_path = Path(path)
    if out_path.suffix.lower() == ".edn":
        lines = edn_lines(events, faults=faults)
    else:
        lines = [json.dumps(event.to_dict(), separators=(", ", ": ")) for event in events]
    with out_path.open("w", encoding="utf-8") as out:
        for line in lines:
            out.write(line + "\n")


def _edn_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") + '"'


def _edn_value(value: object) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return _edn_string(str(value))


def _edn_keyword(name: str) -> str:
    return ":" + "".join(c if c.isalnum() or c in "-_?!*+." else "-" for c in name)


def edn_lines(events: Iterable[Event], *, faults: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """The history as Jepsen EDN operation maps, one per line, in time order; faults
    (``{"at_s": …, "fault": "kill node0"}``) become ``:nemesis`` ``:info`` operations.
    ``:index`` numbers every line in order (Jepsen wants dense indices), so with faults
    it differs from the events' own index."""
    rows: list[tuple[int, int, str]] = []
    for event in sorted(events, key=lambda e: e.index):
        fields = [
            f":time {event.time}",
            f":type {_edn_keyword(event.type.value)}",
            f":process {event.process}",
            f":f {_edn_keyword(event.f)}",
            f":value [{_edn_string(event.key)} {_edn_value(event.value)}]",
        ]
        if event.error is not None:
            fields.append(f":error {_edn_string(event.error)}")
        rows.append((event.time, 0, ", ".join(fields)))
    for fault in faults:
        at = round(float(fault["at_s"]) * 1e9)
        text = str(fault["fault"])
        action = text.split(" ", 1)[0]
        rows.append(
            (
                at,
                1,
                f":time {at}, :type :info, :process :nemesis, :f {_edn_keyword(action)}, "
                f":value {_edn_string(text)}",
            )
        )
    rows.sort(key=lambda row: (row[0], row[1]))  # stable: events keep their order
    return [f"{{:index {i}, {text}}}" for i, (_, _, text) in enumerate(rows)]


def read_history(path: str | Path) -> list[Event]:
    with Path(path).open(encoding="utf-8") as src:
        return [Event.from_dict(json.loads(line)) for line in src if line.strip()]
