"""Version vectors and dotted version vectors.

A :class:`VersionVector` maps node ids to counters and stands for a causal history
that is downward closed per node: ``{"a": 3}`` means events ``a:1``, ``a:2`` and
``a:3``. Two vectors are ordered when one contains the other, else concurrent.

A :class:`Dot` names one event, ``(node, counter)``. A :class:`DottedVersionVector`
(Preguiça, Baquero et al., 2010) is a dot plus the context the event was based
on; unlike a plain vector it can say "``a:5`` happened after seeing ``a:1..3``
but not ``a:4``", which is what lets a server keep a client's concurrent writes
apart instead of declaring the later one newer (Riak's "sibling explosion" and
lost-update problem of plain per-server vectors).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from multistore.core._hlc import _check_node
from multistore.errors import InvalidValueError

__all__ = ["Dot", "DottedVersionVector", "Ordering", "VersionVector"]


class Ordering(enum.Enum):
    """How two causal histories relate."""

    BEFORE = "before"
    """The left one happened before the right one (its history is strictly contained)."""
    AFTER = "after"
    EQUAL = "equal"
    CONCURRENT = "concurrent"
    """Neither contains the other: the two are conflicting, concurrent updates."""

    @classmethod
    def of(cls, ge: bool, le: bool) -> Ordering:
        """The ordering of two histories from whether each contains the other."""
        if ge:
            return cls.EQUAL if le else cls.AFTER
        return cls.BEFORE if le else cls.CONCURRENT

    def reverse(self) -> Ordering:
        return {Ordering.BEFORE: Ordering.AFTER, Ordering.AFTER: Ordering.BEFORE}.get(self, self)


_KNOWN_NODES: set[str] = set()
"""Node ids already checked (a handful in any real system; bounded below)."""


def _known_node(node: object) -> str:
    """:func:`_check_node`, remembering the ids that passed (vectors are built constantly)."""
    if isinstance(node, str) and node in _KNOWN_NODES:
        return node
    checked = _check_node(node)
    if len(_KNOWN_NODES) < 65_536:
        _KNOWN_NODES.add(checked)
    return checked


def _dot(node: str, counter: int) -> Dot:
    """A :class:`Dot` from a node and counter already known to be valid (no checks)."""
    return _new_tuple(Dot, (node, counter))


_new_tuple = tuple.__new__


def _check_counter(counter: object, *, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if type(counter) is not int or counter < low:
        raise InvalidValueError(f"a version counter must be an int >= {low}, got {counter!r}")
    return counter


class Dot(tuple[str, int]):
    """One event: the ``counter``-th event of ``node`` (counters start at 1).

    An immutable ``(node, counter)`` pair; dots order by node, then counter. It is
    a tuple underneath, so hashing and comparing dots (the inner loop of every
    causal CRDT merge) runs at C speed.
    """

    __slots__ = ()

    def __new__(cls, node: str, counter: int) -> Dot:
        return _new_tuple(cls, (_known_node(node), _check_counter(counter, allow_zero=False)))

    @property
    def node(self) -> str:
        return self[0]

    @property
    def counter(self) -> int:
        return self[1]

    def __repr__(self) -> str:
        return f"Dot(node={self[0]!r}, counter={self[1]!r})"

    def __getnewargs__(self) -> tuple[str, int]:
        return (self[0], self[1])

    def __str__(self) -> str:
        return f"{self.node}:{self.counter}"

    def to_list(self) -> list[Any]:
        return [self.node, self.counter]

    @classmethod
    def from_list(cls, data: object) -> Dot:
        if not isinstance(data, list | tuple) or len(data) != 2:
            raise InvalidValueError(f"a dot is [node, counter], got {data!r}")
        return cls(data[0], data[1])


class VersionVector(Mapping[str, int]):
    """An immutable map node -> counter; missing nodes count 0 (zeros are not stored)."""

    __slots__ = ("_counters", "_hash")

    def __init__(self, counters: Mapping[str, int] | None = None) -> None:
        clean: dict[str, int] = {}
        for node, counter in (counters or {}).items():
            _known_node(node)
            if _check_counter(counter, allow_zero=True):
                clean[node] = counter
        self._counters = dict(sorted(clean.items()))
        self._hash: int | None = None

    @classmethod
    def _trusted(cls, counters: dict[str, int]) -> VersionVector:
        """A vector from counters that are already valid and non-zero (no checks)."""
        new = object.__new__(cls)
        new._counters = dict(sorted(counters.items()))
        new._hash = None
        return new

    # Mapping protocol ---------------------------------------------------------
    def __getitem__(self, node: str) -> int:
        return self._counters[node]

    def get_count(self, node: str) -> int:
        """The counter of ``node`` (0 when absent)."""
        return self._counters.get(node, 0)

    def __iter__(self) -> Iterator[str]:
        return iter(self._counters)

    def __len__(self) -> int:
        return len(self._counters)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, VersionVector):
            return self._counters == other._counters
        return NotImplemented

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(self._counters.items()))
        return self._hash

    def __repr__(self) -> str:
        return f"VersionVector({self._counters!r})"

    # Operations ---------------------------------------------------------------
    def increment(self, node: str) -> VersionVector:
        """The vector after one more event at ``node``."""
        counters = dict(self._counters)
        counters[_known_node(node)] = counters.get(node, 0) + 1
        return VersionVector._trusted(counters)

    def merge(self, other: VersionVector) -> VersionVector:
        """The pointwise maximum: the union of both histories."""
        mine = self._counters
        counters: dict[str, int] | None = None
        for node, counter in other._counters.items():
            if counter > mine.get(node, 0):
                if counters is None:
                    counters = dict(mine)
                counters[node] = counter
        return self if counters is None else VersionVector._trusted(counters)

    def descends(self, other: VersionVector) -> bool:
        """True when this history contains ``other``'s (``>=`` pointwise; EQUAL counts)."""
        mine = self._counters
        return all(mine.get(node, 0) >= counter for node, counter in other._counters.items())

    def dominates(self, other: VersionVector) -> bool:
        """True when this history strictly contains ``other``'s (AFTER, not EQUAL)."""
        return self.descends(other) and self != other

    def compare(self, other: VersionVector) -> Ordering:
        """BEFORE, AFTER, EQUAL or CONCURRENT, seen from ``self``."""
        return Ordering.of(self.descends(other), other.descends(self))

    def contains(self, dot: Dot) -> bool:
        """True when the event ``dot`` is part of this history."""
        return dot.counter <= self._counters.get(dot.node, 0)

    def dot(self, node: str) -> Dot:
        """The latest event of ``node`` in this history (``node`` must appear)."""
        counter = self._counters.get(node, 0)
        if counter == 0:
            raise InvalidValueError(f"node {node!r} has no event in {self!r}")
        return _dot(node, counter)

    def to_dict(self) -> dict[str, int]:
        return dict(self._counters)

    @classmethod
    def from_dict(cls, data: object) -> VersionVector:
        if not isinstance(data, Mapping):
            raise InvalidValueError(f"a version vector is an object of counters, got {data!r}")
        return cls(data)


@dataclass(frozen=True, slots=True)
class DottedVersionVector:
    """An event ``dot`` plus the ``context`` (history) it was based on.

    The history it stands for is ``context`` and ``dot``, nothing in between: a
    dot ``a:5`` with context ``{a: 3}`` has not seen ``a:4``.
    """

    dot: Dot
    context: VersionVector

    def __post_init__(self) -> None:
        if self.context.contains(self.dot):
            raise InvalidValueError(f"the context of dot {self.dot} already contains it")

    def contains(self, dot: Dot) -> bool:
        """True when ``dot`` is this event or part of its context."""
        return dot == self.dot or self.context.contains(dot)

    def descends(self, other: DottedVersionVector) -> bool:
        """True when ``other``'s event is part of this history (then so is its context)."""
        return self.contains(other.dot)

    def compare(self, other: DottedVersionVector) -> Ordering:
        return Ordering.of(self.descends(other), other.descends(self))

    def to_vv(self) -> VersionVector:
        """A plain vector covering this history (it over-approximates any gap before the dot)."""
        counters = self.context.to_dict()
        counters[self.dot.node] = max(counters.get(self.dot.node, 0), self.dot.counter)
        return VersionVector(counters)

    def to_dict(self) -> dict[str, Any]:
        return {"dot": self.dot.to_list(), "context": self.context.to_dict()}

    @classmethod
    def from_dict(cls, data: object) -> DottedVersionVector:
        if not isinstance(data, Mapping) or set(data) != {"dot", "context"}:
            raise InvalidValueError(f"a dotted version vector is {{dot, context}}, got {data!r}")
        return cls(Dot.from_list(data["dot"]), VersionVector.from_dict(data["context"]))
