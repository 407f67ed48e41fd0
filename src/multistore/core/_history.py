"""Operation histories of a key-value register, in the shape Jepsen records them.

A history is a list of :class:`Event` values, one per line of a JSON-lines file::

    {"index": 0, "process": 3, "type": "invoke", "f": "write", "key": "k7", "value": 12,
     "time": 1500}
    {"index": 1, "process": 3, "type": "ok", "f": "write", "key": "k7", "value": 12,
     "time": 2100}

- ``time`` is in nanoseconds since the start of the run (any monotonic origin works);
- an operation is two events with the same ``process``: its ``invoke`` and its
  completion, ``ok`` (it happened), ``fail`` (it did not and never will) or ``info``
  (indeterminate: it may have happened, at any time after its invocation);
- a process runs one operation at a time; after an ``info`` it is considered crashed
  and must not invoke again (recorders move on to a fresh process id, as Jepsen does);
- a write's value is on both lines; a read's value is on its ``ok`` line
  (``None`` is the initial, never-written value);
- every write writes a value no other write of that key writes, so a read names the
  one write it saw;
- a ``fail`` or ``info`` line may carry ``"error"``: the message of the error the
  operation ended with.

:func:`pair_operations` turns events into :class:`Operation` values (an invocation
with no completion counts as ``info``), which the checkers in
:mod:`multistore.core._checkers` and :mod:`multistore.core._linearizability` consume.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from multistore.errors import InvalidValueError

__all__ = [
    "NEVER",
    "Event",
    "EventType",
    "Operation",
    "Value",
    "check_unique_writes",
    "pair_operations",
]

Value = int | str | None
"""What a register holds: ``None`` before the first write."""

NEVER: Final = 2**63 - 1
"""Completion time of an indeterminate operation: it may take effect at any later time."""

_FUNCTIONS: Final = frozenset({"read", "write"})


class EventType(enum.Enum):
    INVOKE = "invoke"
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a history."""

    index: int
    process: int
    type: EventType
    f: str
    key: str
    value: Value
    time: int
    error: str | None = None
    """Why a ``fail`` or ``info`` operation ended so (the error's message)."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "index": self.index,
            "process": self.process,
            "type": self.type.value,
            "f": self.f,
            "key": self.key,
            "value": self.value,
            "time": self.time,
        }
        if self.error is not None:
            data["error"] = self.error
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        try:
            index, process, time = data["index"], data["process"], data["time"]
            kind, f, key = EventType(data["type"]), data["f"], data["key"]
            value = data.get("value")
        except (KeyError, ValueError) as exc:
            raise InvalidValueError(f"not a history event: {dict(data)!r} ({exc})") from None
        ints = (index, process, time)
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in ints):
            raise InvalidValueError(f"index, process and time must be integers: {dict(data)!r}")
        if f not in _FUNCTIONS:
            raise InvalidValueError(f"unknown function {f!r}; expected 'read' or 'write'")
        if not isinstance(key, str):
            raise InvalidValueError(f"key must be a string: {dict(data)!r}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | str)):
            raise InvalidValueError(f"value must be an int, a string or null: {value!r}")
        error = data.get("error")
        if error is not None and not isinstance(error, str):
            raise InvalidValueError(f"error must be a string or absent: {error!r}")
        return cls(index, process, kind, f, key, value, time, error)


@dataclass(frozen=True, slots=True)
class Operation:
    """An invocation paired with its completion.

    ``complete`` is :data:`NEVER` for an indeterminate operation. For reads, ``value``
    is what the read returned (only meaningful when ``type`` is ``ok``).
    """

    process: int
    f: str
    key: str
    value: Value
    type: EventType
    invoke: int
    complete: int
    index: int
    """Index of the invocation event: identifies the operation in reports."""
    error: str | None = None
    """The completion's error message (``fail`` and ``info``)."""
    ended: int | None = None
    """When the completion was recorded (an ``info`` operation's ``complete`` is
    :data:`NEVER`, this is when the client gave up); None: never completed."""

    @property
    def ok(self) -> bool:
        return self.type is EventType.OK

    @property
    def is_write(self) -> bool:
        return self.f == "write"

    @property
    def is_read(self) -> bool:
        return self.f == "read"

    def precedes(self, other: Operation) -> bool:
        """True when this operation completed before ``other`` was invoked (real time)."""
        return self.complete < other.invoke

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "process": self.process,
            "f": self.f,
            "key": self.key,
            "value": self.value,
            "type": self.type.value,
            "invoke": self.invoke,
            "complete": None if self.complete == NEVER else self.complete,
            **({"error": self.error} if self.error is not None else {}),
        }


def pair_operations(events: Iterable[Event]) -> list[Operation]:
    """Pair each invocation with its process's next completion, in invocation order.

    Raises :class:`InvalidValueError` for a malformed history: a completion without an
    invocation, a process invoking twice without completing, a completion of another
    function or key, a write completing with another value, a process invoking again
    after an ``info``, or time running backwards.
    """
    ordered = sorted(events, key=lambda e: e.index)
    pending: dict[int, Event] = {}
    crashed: set[int] = set()
    done: list[Operation] = []
    last_time = -1
    for event in ordered:
        if event.time < last_time:
            raise InvalidValueError(f"event {event.index} goes back in time ({event.time})")
        last_time = event.time
        if event.type is EventType.INVOKE:
            if event.process in pending:
                raise InvalidValueError(
                    f"process {event.process} invokes event {event.index} while event "
                    f"{pending[event.process].index} is still open"
                )
            if event.process in crashed:
                raise InvalidValueError(
                    f"process {event.process} invokes event {event.index} after an info; "
                    "use a fresh process id"
                )
            pending[event.process] = event
            continue
        call = pending.pop(event.process, None)
        if call is None:
            raise InvalidValueError(f"event {event.index} completes nothing")
        if (call.f, call.key) != (event.f, event.key):
            raise InvalidValueError(
                f"event {event.index} completes {event.f} {event.key!r} but process "
                f"{event.process} invoked {call.f} {call.key!r}"
            )
        if call.f == "write" and call.value != event.value:
            raise InvalidValueError(
                f"write {call.index} of {call.value!r} completes with {event.value!r}"
            )
        if event.type is EventType.INFO:
            crashed.add(event.process)
        complete = NEVER if event.type is EventType.INFO else event.time
        value = event.value if call.f == "read" else call.value
        done.append(
            Operation(
                call.process,
                call.f,
                call.key,
                value,
                event.type,
                call.time,
                complete,
                call.index,
                event.error,
                event.time,
            )
        )
    for call in pending.values():  # never completed: indeterminate
        done.append(
            Operation(
                call.process,
                call.f,
                call.key,
                call.value,
                EventType.INFO,
                call.time,
                NEVER,
                call.index,
            )
        )
    done.sort(key=lambda op: op.index)
    return done


def check_unique_writes(operations: Sequence[Operation]) -> None:
    """Raise :class:`InvalidValueError` if two writes of one key write the same value
    (or a write writes ``None``): then a read could not name the write it saw."""
    seen: dict[tuple[str, Value], int] = {}
    for op in operations:
        if not op.is_write:
            continue
        if op.value is None:
            raise InvalidValueError(f"write {op.index} writes null; null means 'never written'")
        first = seen.setdefault((op.key, op.value), op.index)
        if first != op.index:
            raise InvalidValueError(
                f"writes {first} and {op.index} both write {op.value!r} to {op.key!r}; "
                "every write must write a unique value"
            )
