"""Linearizability of one read/write register: a Wing–Gong search with memoisation.

A history of one key is linearizable when its operations can be put in one order
that (1) respects real time — if ``a`` completed before ``b`` was invoked, ``a`` comes
first — and (2) is a legal run of a register: every read returns the value of the
last write before it (``None`` before any write). Keys are independent registers, so
a history of many keys is checked key by key (linearizability is compositional).

The search is Wing & Gong's (1993) with Lowe's memoisation (2017), as Knossos and
Porcupine do it: from a configuration (the set of operations already placed, the
register's value) any not-yet-placed operation invoked before every other pending
operation's completion may go next. Configurations already explored are cached, so
the search is exponential only in the number of truly concurrent operations. Reads
that agree with the current value are placed at once without branching (always
safe: placing a read changes no state and only removes a real-time constraint).

- ``ok`` operations must all be placed;
- ``fail`` operations never happened and are left out;
- ``info`` (indeterminate) writes may be placed at any point after their invocation,
  or never; ``info`` reads constrain nothing and are left out.

The search explores at most ``bound`` configurations per key and answers
:attr:`Verdict.UNKNOWN` when the bound is hit.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from multistore.core._history import EventType, Operation, Value

__all__ = [
    "DEFAULT_SEARCH_BOUND",
    "LinearizabilityResult",
    "Verdict",
    "check_linearizable",
    "check_register",
]

DEFAULT_SEARCH_BOUND: Final = 200_000
"""Configurations explored per key before the search gives up with ``unknown``."""


class Verdict(enum.Enum):
    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not-linearizable"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class LinearizabilityResult:
    """The verdict for one key.

    When not linearizable, ``culprit`` is an operation that could not be placed in the
    furthest configuration the search reached (``placed`` operations in, the register
    holding ``value_there``): the first evidence of the violation.
    """

    key: str
    verdict: Verdict
    operations: int
    explored: int
    placed: int = 0
    culprit: Operation | None = None
    value_there: Value = None

    @property
    def linearizable(self) -> bool:
        return self.verdict is Verdict.LINEARIZABLE

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "verdict": self.verdict.value,
            "operations": self.operations,
            "explored": self.explored,
            "placed": self.placed,
            "culprit": None if self.culprit is None else self.culprit.to_dict(),
            "value_there": self.value_there,
        }


def _relevant(op: Operation) -> bool:
    if op.type is EventType.OK:
        return True
    return op.type is EventType.INFO and op.is_write


class _Search:
    def __init__(self, ops: Sequence[Operation]) -> None:
        self.ops = sorted(ops, key=lambda op: (op.invoke, op.index))
        self.invoke = [op.invoke for op in self.ops]
        self.complete = [op.complete for op in self.ops]
        self.read = [op.is_read for op in self.ops]
        self.value = [op.value for op in self.ops]
        self.required = 0
        for i, op in enumerate(self.ops):
            if op.ok:
                self.required |= 1 << i

    def candidates(self, mask: int) -> list[int]:
        """Unplaced operations that may go next: invoked no later than the earliest
        completion among unplaced operations. Ops are sorted by invocation, so the scan
        stops at the first op invoked after the running minimum."""
        n = len(self.ops)
        i = ((mask + 1) & ~mask).bit_length() - 1  # lowest unplaced
        earliest = 2**63
        found: list[int] = []
        while i < n:
            if not mask >> i & 1:
                if self.invoke[i] > earliest:
                    break
                earliest = min(earliest, self.complete[i])
                found.append(i)
            i += 1
        return [j for j in found if self.invoke[j] <= earliest]

    def absorb_reads(self, mask: int, value: Value) -> int:
        """Place every read that may go next and returns the current value."""
        changed = True
        while changed:
            changed = False
            for i in self.candidates(mask):
                if self.read[i] and self.value[i] == value:
                    mask |= 1 << i
                    changed = True
        return mask


def check_register(
    key: str, operations: Iterable[Operation], *, bound: int = DEFAULT_SEARCH_BOUND
) -> LinearizabilityResult:
    """Check one key's operations (all of the same key) against a register."""
    ops = [op for op in operations if _relevant(op)]
    search = _Search(ops)
    required = search.required
    start = search.absorb_reads(0, None)
    stack: list[tuple[int, Value]] = [(start, None)]
    seen: set[tuple[int, Value]] = {(start, None)}
    explored = 0
    best: tuple[int, int, Value] = (-1, 0, None)  # placed count, mask, value
    while stack:
        mask, value = stack.pop()
        explored += 1
        placed = (mask & required).bit_count()
        if placed > best[0]:
            best = (placed, mask, value)
        if mask & required == required:
            return LinearizabilityResult(
                key, Verdict.LINEARIZABLE, len(ops), explored, placed, None, value
            )
        if explored >= bound:
            return LinearizabilityResult(
                key, Verdict.UNKNOWN, len(ops), explored, best[0], None, best[2]
            )
        for i in search.candidates(mask):
            if search.read[i]:
                continue  # matching reads were absorbed; others cannot go here
            new_value = search.value[i]
            new_mask = search.absorb_reads(mask | 1 << i, new_value)
            state = (new_mask, new_value)
            if state not in seen:
                seen.add(state)
                stack.append(state)
    placed, mask, value = best
    culprit = _culprit(search, mask, value)
    return LinearizabilityResult(
        key, Verdict.NOT_LINEARIZABLE, len(ops), explored, placed, culprit, value
    )


def _culprit(search: _Search, mask: int, value: Value) -> Operation | None:
    """The unplaced ``ok`` operation that had to go next, preferring a read that could
    not return what it returned."""
    pending = [i for i in range(len(search.ops)) if search.required >> i & 1 and not mask >> i & 1]
    if not pending:
        return None
    blocked_reads = [
        i for i in search.candidates(mask) if search.read[i] and search.value[i] != value
    ]
    pick = blocked_reads or pending
    return search.ops[min(pick, key=lambda i: search.complete[i])]


def check_linearizable(
    operations: Iterable[Operation], *, bound: int = DEFAULT_SEARCH_BOUND
) -> list[LinearizabilityResult]:
    """Check every key of a history as an independent register, keys in sorted order."""
    by_key: dict[str, list[Operation]] = {}
    for op in operations:
        by_key.setdefault(op.key, []).append(op)
    return [check_register(key, by_key[key], bound=bound) for key in sorted(by_key)]
