"""The dot kernel: live dots grouped by key, plus the causal context of everything seen.

Used by the OR-Set (key = element, no payload), the MV-Register (one key,
payload = the value) and the OR-Map (key = map key, payload = a CRDT). Each dot
belongs to exactly one key (a dot is one event, and an event touches one key),
so an index dot -> key lets a small delta remove dots without scanning the
whole store.

The per-key dot maps are never changed in place: a change replaces the key's map
with a new one. So a copy of a kernel shares them (copying is two flat dict
copies, however many keys), and so do the states that merge produces.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from multistore.core._causal import CausalContext
from multistore.core._vv import Dot

__all__ = ["DotKernel"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


_NONE: Mapping[Any, Any] = {}
"""The dot map of an absent key (shared: never changed)."""


class DotKernel(Generic[K, V]):
    """``entries[key][dot] = payload`` for the live dots, and ``context`` for all seen dots."""

    __slots__ = ("context", "entries", "owner")

    def __init__(self) -> None:
        self.entries: dict[K, dict[Dot, V]] = {}
        self.owner: dict[Dot, K] = {}
        self.context = CausalContext()

    def copy(self) -> DotKernel[K, V]:
        """A copy sharing the per-key maps and the payloads (neither is changed in place)."""
        clone: DotKernel[K, V] = DotKernel()
        clone.entries = dict(self.entries)
        clone.owner = dict(self.owner)
        clone.context = self.context.copy()
        return clone

    def dots(self, key: K) -> Mapping[Dot, V]:
        return self.entries.get(key, _NONE)

    def keys(self) -> Iterator[K]:
        return iter(self.entries)

    def add(self, key: K, dot: Dot, payload: V) -> None:
        """Record a live dot (and see it in the context)."""
        dots = dict(self.entries.get(key, _NONE))
        dots[dot] = payload
        self.entries[key] = dots
        self.owner[dot] = key
        self.context.add(dot)

    def discard(self, dot: Dot) -> None:
        """Drop a live dot; it stays in the context, so it is removed for good."""
        key = self.owner.pop(dot, None)
        if key is None:
            return
        dots = dict(self.entries[key])
        del dots[dot]
        if dots:
            self.entries[key] = dots
        else:
            del self.entries[key]

    def see(self, dots: Iterable[Dot]) -> None:
        for dot in dots:
            self.context.add(dot)

    def join(self, other: DotKernel[K, V]) -> None:
        """Join ``other`` into this kernel in place.

        A dot survives if both hold it, or if one holds it and the other never saw
        it. A dot names one event, so both sides hold the same payload for it;
        payloads are shared, never copied (they must not be changed in place).
        Only the dots one side holds and the other does not need a look: between
        two full states, two set differences over the dot indexes find them (in C);
        a small delta is looked at dot by dot, so that it costs its own size only.
        """
        mine, theirs = self.context, other.context
        my_owner, their_owner = self.owner, other.owner
        # 1. drop my live dots that the other has seen and no longer holds
        if theirs.size() < len(my_owner) // 4:
            gone = [d for d in theirs.dots() if d in my_owner and d not in their_owner]
        else:
            gone = [d for d in my_owner.keys() - their_owner.keys() if theirs.contains(d)]
        # 2. take their live dots that I have never seen
        if len(their_owner) < len(my_owner) // 4:
            new = [d for d in their_owner if d not in my_owner and not mine.contains(d)]
        else:
            new = [d for d in their_owner.keys() - my_owner.keys() if not mine.contains(d)]
        entries = self.entries
        if gone:
            changed: dict[K, dict[Dot, V]] = {}
            for dot in gone:
                key = my_owner.pop(dot)
                dots = changed.get(key)
                if dots is None:
                    dots = changed[key] = dict(entries[key])
                del dots[dot]
            for key, dots in changed.items():
                if dots:
                    entries[key] = dots
                else:
                    del entries[key]
        if new:
            added: dict[K, dict[Dot, V]] = {}
            their_entries = other.entries
            for dot in new:
                key = their_owner[dot]
                dots = added.get(key)
                if dots is None:
                    dots = added[key] = dict(entries.get(key, _NONE))
                dots[dot] = their_entries[key][dot]
                my_owner[dot] = key
            entries.update(added)
        # 3. the context is the union
        mine.update(theirs)

    def same(self, other: DotKernel[K, V]) -> bool:
        return self.entries == other.entries and self.context == other.context
