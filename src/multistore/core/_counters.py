"""Counters: grow-only (G-Counter) and increment/decrement (PN-Counter).

A G-Counter keeps one count per node; a node only raises its own entry, merge
takes the maximum per node, and the value is the sum. A PN-Counter is two
G-Counters, one for increments and one for decrements. A delta is just the
mutating node's new entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from multistore.core._crdt import CRDT
from multistore.core._hlc import _check_node
from multistore.errors import InvalidValueError

__all__ = ["GCounter", "PNCounter"]


def _positive(amount: object) -> int:
    if type(amount) is not int or amount < 1:
        raise InvalidValueError(f"a counter step must be a positive int, got {amount!r}")
    return amount


def _join_counts(mine: dict[str, int], theirs: Mapping[str, int]) -> None:
    for node, count in theirs.items():
        if count > mine.get(node, 0):
            mine[node] = count


def _decode_counts(data: object, what: str) -> dict[str, int]:
    if not isinstance(data, Mapping):
        raise InvalidValueError(f"{what} must be an object of node -> count, got {data!r}")
    counts: dict[str, int] = {}
    for node, count in data.items():
        _check_node(node)
        if type(count) is not int or count < 0:
            raise InvalidValueError(f"{what}: count of {node!r} must be an int >= 0, got {count!r}")
        if count:
            counts[node] = count
    return counts


class GCounter(CRDT):
    """A grow-only counter."""

    type_name = "gcounter"
    __slots__ = ("_counts",)

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self._counts: dict[str, int] = {}

    @property
    def value(self) -> int:
        return sum(self._counts.values())

    @property
    def counts(self) -> dict[str, int]:
        """Each node's contribution (a copy)."""
        return dict(self._counts)

    def increment(self, amount: int = 1) -> Self:
        """Add ``amount`` (> 0) at this node; returns the delta."""
        total = self._counts.get(self._node, 0) + _positive(amount)
        self._counts[self._node] = total
        delta = self._empty()
        delta._counts[self._node] = total
        return delta

    def copy(self) -> Self:
        clone = self._blank()
        clone._counts = dict(self._counts)
        return clone

    def _empty(self) -> Self:
        return type(self)(self._node)

    def _join(self, other: Self) -> None:
        _join_counts(self._counts, other._counts)

    def _same_state(self, other: Self) -> bool:
        return self._counts == other._counts

    def _encode(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self._counts.items()))}

    @classmethod
    def _decode(cls, data: Mapping[str, Any], node: str) -> Self:
        state = cls(node)
        state._counts = _decode_counts(data.get("counts", {}), "gcounter counts")
        return state


class PNCounter(CRDT):
    """A counter that can go up and down."""

    type_name = "pncounter"
    __slots__ = ("_n", "_p")

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self._p: dict[str, int] = {}
        self._n: dict[str, int] = {}

    @property
    def value(self) -> int:
        return sum(self._p.values()) - sum(self._n.values())

    @property
    def increments(self) -> dict[str, int]:
        """Each node's total increments (a copy)."""
        return dict(self._p)

    @property
    def decrements(self) -> dict[str, int]:
        """Each node's total decrements (a copy)."""
        return dict(self._n)

    def increment(self, amount: int = 1) -> Self:
        """Add ``amount`` (> 0) at this node; returns the delta."""
        total = self._p.get(self._node, 0) + _positive(amount)
        self._p[self._node] = total
        delta = self._empty()
        delta._p[self._node] = total
        return delta

    def decrement(self, amount: int = 1) -> Self:
        """Subtract ``amount`` (> 0) at this node; returns the delta."""
        total = self._n.get(self._node, 0) + _positive(amount)
        self._n[self._node] = total
        delta = self._empty()
        delta._n[self._node] = total
        return delta

    def add(self, amount: int) -> Self:
        """Add a signed non-zero ``amount``; returns the delta."""
        if type(amount) is not int or amount == 0:
            raise InvalidValueError(f"a counter change must be a non-zero int, got {amount!r}")
        return self.increment(amount) if amount > 0 else self.decrement(-amount)

    def copy(self) -> Self:
        clone = self._blank()
        clone._p, clone._n = dict(self._p), dict(self._n)
        return clone

    @classmethod
    def _own(cls, node: str, up: int, down: int) -> PNCounter:
        """A counter holding only ``node``'s totals; ``node`` must already be valid."""
        counter = object.__new__(PNCounter)
        counter._node = node
        counter._p = {node: up} if up else {}
        counter._n = {node: down} if down else {}
        return counter

    def _empty(self) -> Self:
        return type(self)(self._node)

    def _join(self, other: Self) -> None:
        _join_counts(self._p, other._p)
        _join_counts(self._n, other._n)

    def _same_state(self, other: Self) -> bool:
        return self._p == other._p and self._n == other._n

    def _encode(self) -> dict[str, Any]:
        data: dict[str, Any] = {"p": dict(sorted(self._p.items()))}
        if self._n:
            data["n"] = dict(sorted(self._n.items()))
        return data

    @classmethod
    def _decode(cls, data: Mapping[str, Any], node: str) -> Self:
        state = cls(node)
        state._p = _decode_counts(data.get("p", {}), "pncounter p")
        state._n = _decode_counts(data.get("n", {}), "pncounter n")
        return state
