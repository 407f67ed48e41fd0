"""The dot kernel: live dots grouped by key, plus the causal context of everything seen.

Used by the OR-Set (key = element, no payload), the MV-Register (one key,
payload = the value) and the OR-Map (key = map key, payload = a CRDT). Each dot
belongs to exactly one key (a dot is one event, and an event touches one key),
so an index dot -> key lets a small delta remove dots without scanning the
whole store.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Generic, TypeVar

from multistore.core._causal import CausalContext
from multistore.core._vv import Dot

__all__ = ["DotKernel"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class DotKernel(Generic[K, V]):
    """``entries[key][dot] = payload`` for the live dots, and ``context`` for all seen dots."""

    __slots__ = ("context", "entries", "owner")

    def __init__(self) -> None:
        self.entries: dict[K, dict[Dot, V]] = {}
        self.owner: dict[Dot, K] = {}
        self.context = CausalContext()

    def copy(self) -> DotKernel[K, V]:
        """A copy sharing the payloads (which are never changed in place)."""
        clone: DotKernel[K, V] = DotKernel()
        clone.entries = {key: dict(dots) for key, dots in self.entries.items()}
        clone.owner = dict(self.owner)
        clone.context = self.context.copy()
        return clone

    def dots(self, key: K) -> dict[Dot, V]:
        return self.entries.get(key, {})

    def keys(self) -> Iterator[K]:
        return iter(self.entries)

    def add(self, key: K, dot: Dot, payload: V) -> None:
        """Record a live dot (and see it in the context)."""
        self.entries.setdefault(key, {})[dot] = payload
        self.owner[dot] = key
        self.context.add(dot)

    def discard(self, dot: Dot) -> None:
        """Drop a live dot; it stays in the context, so it is removed for good."""
        key = self.owner.pop(dot, None)
        if key is None:
            return
        dots = self.entries[key]
        del dots[dot]
        if not dots:
            del self.entries[key]

    def see(self, dots: Iterable[Dot]) -> None:
        for dot in dots:
            self.context.add(dot)

    def join(self, other: DotKernel[K, V]) -> None:
        """Join ``other`` into this kernel in place.

        A dot survives if both hold it, or if one holds it and the other never saw
        it. A dot names one event, so both sides hold the same payload for it;
        payloads are shared, never copied (they must not be changed in place).
        """
        theirs = other.context
        # 1. drop my live dots that the other has seen and no longer holds
        if theirs.size() < len(self.owner):
            candidates = [d for d in theirs.dots() if d in self.owner]
        else:
            candidates = list(self.owner)
        for dot in candidates:
            if dot not in other.owner and theirs.contains(dot):
                self.discard(dot)
        # 2. take their live dots that I have never seen
        mine = self.context
        for key, dots in other.entries.items():
            for dot, payload in dots.items():
                if not mine.contains(dot):
                    self.entries.setdefault(key, {})[dot] = payload
                    self.owner[dot] = key
        # 3. the context is the union
        mine.update(theirs)

    def same(self, other: DotKernel[K, V]) -> bool:
        return self.entries == other.entries and self.context == other.context
