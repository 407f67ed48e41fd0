"""Versioned values and the sibling store (DVVSet-style).

A :class:`Versioned` is one write: its value, its HLC timestamp, its causal
history and the node it came from; its own event is the dot
``(origin, vv[origin])``. The history is ``vv`` (a version vector, downward
closed per node) unless the write was based on a context that had not seen all
of its origin's earlier events for the key: then ``past`` holds that exact
context and the history is ``past`` plus the dot (a dotted version vector), so a
write that did not see its sibling ``a:1`` is not mistaken for one that did.

A delete is a version whose value is :data:`DELETED` (a :class:`Tombstone`): it
supersedes exactly what its context covers, like any write, and a concurrent
write survives it as a sibling.

A :class:`SiblingSet` keeps the versions of one key that no other version it
knows has superseded, plus the causal context of everything it has seen. It is
the dot kernel of the causal CRDTs applied to whole values:

* ``write(value, context=...)`` — a client write based on a read: the versions
  that ``context`` covers are superseded and dropped, the others are concurrent
  and stay as siblings. The new version's event is a fresh dot with the exact
  context as its history (a dotted version vector), so a stale client context
  never makes the write look newer than a sibling it did not see.
* ``merge(other)`` — replica sync; commutative, associative, idempotent. A
  version survives if both sides hold it, or one holds it and the other has
  never seen it.
* ``add(version)`` — receive a single version: the siblings its history covers
  are dropped, and it is kept unless the set has already seen its dot. The set's
  context then takes in ``version.vv``, which over-approximates a version with a
  ``past``: it also covers the origin's earlier dots for the key that the write
  had not seen. Deliver each origin's versions of a key in the order the origin
  made them (as the multi-master replicator does) and this is exact: those dots
  have already been received. Otherwise replicate whole sets with ``merge``.

**Sibling limit.** ``write(..., limit=k)`` (and :meth:`trim`) keep at most *k*
versions: the new one plus the newest *k - 1* others by HLC; the rest are
dropped and returned, and their dots stay in the context so the drop replicates
like an overwrite. ``merge``/``add`` never drop anything: a limit applied inside
a merge would make merge order-dependent (two replicas trimming different
versions of the same union could each delete what the other kept). A merged set
may therefore exceed the limit until the next write or :meth:`trim` on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from multistore.core._hlc import HLCTimestamp
from multistore.core._vv import (
    Dot,
    DottedVersionVector,
    Ordering,
    VersionVector,
    _dot,
    _known_node,
)
from multistore.errors import InvalidValueError

__all__ = ["DELETED", "SiblingSet", "SiblingWrite", "Siblings", "Tombstone", "Versioned"]

T = TypeVar("T")


class Tombstone:
    """The value of a delete. There is one instance, :data:`DELETED`; compare with ``is``."""

    __slots__ = ()
    _instance: Tombstone | None = None

    def __new__(cls) -> Tombstone:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DELETED"

    def __reduce__(self) -> str:
        return "DELETED"


DELETED: Final = Tombstone()
"""The value of a deleted key's version (on the wire: ``"deleted": true`` instead of a value)."""


@dataclass(frozen=True, slots=True)
class Versioned(Generic[T]):
    """One version of a value: ``value`` written at ``origin``, stamped ``hlc``, history ``vv``.

    ``past`` is given only for a write whose context had not seen every earlier
    event of its origin: the exact context, so that the history is ``past`` plus
    the version's own dot and ``vv`` is that history's covering vector. When
    ``past`` has no such gap it is dropped (``None``), so equal histories compare
    equal however they were built.
    """

    value: T
    hlc: HLCTimestamp
    vv: VersionVector
    origin: str
    past: VersionVector | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.hlc, HLCTimestamp):
            raise InvalidValueError(f"Versioned.hlc must be an HLCTimestamp, got {self.hlc!r}")
        if not isinstance(self.vv, VersionVector):
            raise InvalidValueError(f"Versioned.vv must be a VersionVector, got {self.vv!r}")
        _known_node(self.origin)
        counter = self.vv.get_count(self.origin)
        if counter == 0:
            raise InvalidValueError(
                f"the version vector {self.vv.to_dict()} of a version from {self.origin!r} "
                "must count its own event"
            )
        past = self.past
        if past is None:
            return
        if not isinstance(past, VersionVector):
            raise InvalidValueError(f"Versioned.past must be a VersionVector, got {past!r}")
        own = past.get_count(self.origin)
        if own >= counter or self.vv.to_dict() != {**past.to_dict(), self.origin: counter}:
            raise InvalidValueError(
                f"the version vector {self.vv.to_dict()} must be the past {past.to_dict()} "
                f"plus the version's own event {self.origin}:{counter}"
            )
        if own == counter - 1:
            object.__setattr__(self, "past", None)  # no gap: the plain vector is exact

    @property
    def dot(self) -> Dot:
        """This version's own event."""
        return _dot(self.origin, self.vv.get_count(self.origin))

    @property
    def deleted(self) -> bool:
        """True for a delete (the value is :data:`DELETED`)."""
        return self.value is DELETED

    @property
    def dvv(self) -> DottedVersionVector:
        """The exact history: the own dot and the context the write was based on."""
        if self.past is not None:
            return DottedVersionVector(self.dot, self.past)
        counter = self.vv.get_count(self.origin)
        return DottedVersionVector(
            Dot(self.origin, counter),
            VersionVector({**self.vv.to_dict(), self.origin: counter - 1}),
        )

    def covers(self, dot: Dot) -> bool:
        """True when the event ``dot`` is part of this version's history (its own included)."""
        if self.past is None:
            return self.vv.contains(dot)
        return dot.counter <= self.past.get_count(dot.node) or (
            dot.node == self.origin and dot.counter == self.vv.get_count(self.origin)
        )

    def descends(self, other: Versioned[Any]) -> bool:
        """True when this version's history contains ``other``'s (EQUAL counts)."""
        if self.past is None and other.past is None:
            return self.vv.descends(other.vv)
        if self.dot == other.dot:
            return True  # one event, one history
        if not self.covers(other.dot):
            return False
        mine = self.past if self.past is not None else self.vv
        if other.past is not None:
            return mine.descends(other.past)
        own = other.origin
        return all(
            (count - 1 if node == own else count) <= mine.get_count(node)
            for node, count in other.vv.items()
        )

    def compare(self, other: Versioned[Any]) -> Ordering:
        """How this version's history relates to ``other``'s."""
        return Ordering.of(self.descends(other), other.descends(self))

    def sort_key(self) -> tuple[HLCTimestamp, Dot]:
        """Newest-last order: HLC, then dot (deterministic across replicas)."""
        return self.hlc, self.dot

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe when ``value`` is; a delete has ``"deleted": true`` instead of a value."""
        data: dict[str, Any] = {"deleted": True} if self.value is DELETED else {"value": self.value}
        data["hlc"] = str(self.hlc)
        data["vv"] = self.vv.to_dict()
        data["origin"] = self.origin
        if self.past is not None:
            data["past"] = self.past.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: object) -> Versioned[Any]:
        if (
            not isinstance(data, Mapping)
            or not {"hlc", "vv", "origin"} <= set(data) <= _VERSION_KEYS
            or ("value" in data) == ("deleted" in data)
            or ("deleted" in data and data["deleted"] is not True)
        ):
            raise InvalidValueError(
                f"a version is {{value or deleted, hlc, vv, origin[, past]}}, got {data!r}"
            )
        past = data.get("past")
        value: Any = DELETED if "deleted" in data else data["value"]
        return cls(
            value,
            HLCTimestamp.parse(data["hlc"]),
            VersionVector.from_dict(data["vv"]),
            data["origin"],
            None if past is None else VersionVector.from_dict(past),
        )


_VERSION_KEYS: Final = frozenset({"value", "deleted", "hlc", "vv", "origin", "past"})


class SiblingSet(Generic[T]):
    """The surviving (mutually concurrent) versions of one key, plus what was seen.

    Immutable: every operation returns a new set.
    """

    __slots__ = ("_context", "_entries")

    def __init__(
        self, versions: Iterable[Versioned[T]] = (), context: VersionVector | None = None
    ) -> None:
        given = list(versions)
        seen = context if context is not None else VersionVector()
        for version in given:
            if not isinstance(version, Versioned):
                raise InvalidValueError(f"a sibling must be a Versioned, got {version!r}")
            seen = seen.merge(version.vv)
        entries: dict[Dot, Versioned[T]] = {}
        for version in given:
            covered = any(other.dot != version.dot and other.covers(version.dot) for other in given)
            if not covered:
                entries[version.dot] = version
        self._entries = entries
        self._context = seen

    @classmethod
    def _make(cls, entries: dict[Dot, Versioned[T]], context: VersionVector) -> SiblingSet[T]:
        new: SiblingSet[T] = cls.__new__(cls)
        new._entries = entries
        new._context = context
        return new

    # Reading -------------------------------------------------------------------
    @property
    def context(self) -> VersionVector:
        """Everything this set has seen: pass it back as the ``context`` of the next write."""
        return self._context

    @property
    def versions(self) -> tuple[Versioned[T], ...]:
        """The siblings, oldest first (HLC, then dot)."""
        return tuple(sorted(self._entries.values(), key=Versioned.sort_key))

    @property
    def values(self) -> tuple[T, ...]:
        return tuple(version.value for version in self.versions)

    @property
    def newest(self) -> Versioned[T] | None:
        """The sibling with the greatest HLC, if any."""
        return max(self._entries.values(), key=Versioned.sort_key, default=None)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Versioned[T]]:
        return iter(self.versions)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SiblingSet):
            return self._entries == other._entries and self._context == other._context
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SiblingSet({list(self.versions)!r}, context={self._context.to_dict()})"

    # Changing ------------------------------------------------------------------
    def write(
        self,
        value: T,
        *,
        node: str,
        hlc: HLCTimestamp,
        context: VersionVector,
        limit: int | None = None,
    ) -> SiblingWrite[T]:
        """A write at ``node`` based on a read that returned ``context``.

        Versions ``context`` covers are superseded; the others stay as siblings
        (at most ``limit`` in all, see the module docstring).
        """
        _known_node(node)
        _check_limit(limit)
        if not isinstance(context, VersionVector):
            raise InvalidValueError(f"context must be a VersionVector, got {context!r}")
        counter = max(self._context.get_count(node), context.get_count(node)) + 1
        dot = _dot(node, counter)
        dvv = DottedVersionVector(dot, context)
        vv = context.merge(VersionVector._trusted({node: counter}))
        gap = counter > context.get_count(node) + 1  # the write did not see its node's last
        version = Versioned(value, hlc, vv, node, past=context if gap else None)
        kept: dict[Dot, Versioned[T]] = {}
        superseded: list[Versioned[T]] = []
        for sibling_dot, sibling in self._entries.items():
            if context.contains(sibling_dot):
                superseded.append(sibling)
            else:
                kept[sibling_dot] = sibling
        kept[dot] = version
        seen = self._context.merge(vv)
        siblings, dropped = SiblingSet._make(kept, seen).trim(limit, keep=dot)
        if len(superseded) > 1:
            superseded.sort(key=Versioned.sort_key)
        return SiblingWrite(siblings, version, dvv, tuple(superseded), dropped)

    def overwrite(
        self, value: T, *, node: str, hlc: HLCTimestamp
    ) -> tuple[SiblingSet[T], Versioned[T]]:
        """A blind write at ``node``: ``write(value, node=node, hlc=hlc, context=self.context)``
        without the report — it supersedes every sibling. Returns the new set and version."""
        _known_node(node)
        counters = self._context.to_dict()
        counter = counters.get(node, 0) + 1
        counters[node] = counter
        vv = VersionVector._trusted(counters)
        version = Versioned(value, hlc, vv, node)
        return SiblingSet._make({_dot(node, counter): version}, vv), version

    def add(self, version: Versioned[T]) -> SiblingSet[T]:
        """Receive one version: drop the siblings its history covers and keep it, unless
        this set has already seen its dot (see the module docstring on delivery order)."""
        if not isinstance(version, Versioned):
            raise InvalidValueError(f"a sibling must be a Versioned, got {version!r}")
        context = self._context.merge(version.vv)
        if self._context.contains(version.dot):  # held already, or superseded
            return self if context == self._context else SiblingSet._make(self._entries, context)
        entries = {d: v for d, v in self._entries.items() if not version.covers(d)}
        entries[version.dot] = version
        return SiblingSet._make(entries, context)

    def merge(self, other: SiblingSet[T]) -> SiblingSet[T]:
        """The join of two sibling sets (commutative, associative, idempotent)."""
        mine, theirs = self._entries, other._entries
        entries: dict[Dot, Versioned[T]] = {}
        for dot, version in mine.items():
            if dot in theirs or not other._context.contains(dot):
                entries[dot] = version
        for dot, version in theirs.items():
            if dot not in mine and not self._context.contains(dot):
                entries[dot] = version
        return SiblingSet._make(entries, self._context.merge(other._context))

    def trim(
        self, limit: int | None, *, keep: Dot | None = None
    ) -> tuple[SiblingSet[T], tuple[Versioned[T], ...]]:
        """Keep the newest ``limit`` siblings (and ``keep``); return the new set and the dropped."""
        _check_limit(limit)
        if limit is None or len(self._entries) <= limit:
            return self, ()
        ordered = sorted(
            self._entries.values(), key=lambda v: (v.dot == keep, v.sort_key()), reverse=True
        )
        survivors = {version.dot: version for version in ordered[:limit]}
        dropped = tuple(sorted(ordered[limit:], key=Versioned.sort_key))
        return SiblingSet._make(survivors, self._context), dropped

    # Wire form -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        entries = self._entries
        versions = (
            [version.to_dict() for version in entries.values()]
            if len(entries) == 1
            else [version.to_dict() for version in self.versions]
        )
        return {"versions": versions, "context": self._context.to_dict()}

    @classmethod
    def from_dict(cls, data: object) -> SiblingSet[Any]:
        if not isinstance(data, Mapping) or set(data) != {"versions", "context"}:
            raise InvalidValueError(f"a sibling set is {{versions, context}}, got {data!r}")
        versions = data["versions"]
        if not isinstance(versions, list):
            raise InvalidValueError(f"sibling versions must be a list, got {versions!r}")
        context = VersionVector.from_dict(data["context"])
        entries: dict[Dot, Versioned[Any]] = {}
        for item in versions:
            version = Versioned.from_dict(item)
            if not context.contains(version.dot):
                raise InvalidValueError(f"sibling {version.dot} is not in the set's context")
            entries[version.dot] = version
        return cls._make(entries, context)


Siblings = SiblingSet
"""Another name for :class:`SiblingSet`."""


@dataclass(frozen=True, slots=True)
class SiblingWrite(Generic[T]):
    """What :meth:`SiblingSet.write` did."""

    siblings: SiblingSet[T]
    """The new state of the key."""
    version: Versioned[T]
    """The version written."""
    dvv: DottedVersionVector
    """The write's exact history: its dot and the context it was based on."""
    superseded: tuple[Versioned[T], ...]
    """Versions the write's context covered (overwritten, not a conflict)."""
    dropped: tuple[Versioned[T], ...]
    """Concurrent versions dropped because of the sibling limit (lost updates: record them)."""


def _check_limit(limit: object) -> None:
    if limit is not None and (type(limit) is not int or limit < 1):
        raise InvalidValueError(f"a sibling limit must be an int >= 1 or None, got {limit!r}")
