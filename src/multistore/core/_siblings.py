"""Versioned values and the sibling store (DVVSet-style).

A :class:`Versioned` is one write: its value, its HLC timestamp, its causal
history as a version vector (its own event included) and the node it came from;
its own event is the dot ``(origin, vv[origin])``.

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
* ``add(version)`` — receive a single version; its ``vv`` is trusted as its
  history. Versions made by :meth:`SiblingSet.write` are exact inside sets; a
  version shipped alone carries its history as a plain vector, which
  over-approximates one case: a write at node *n* concurrent with another,
  not-yet-seen write at *n* itself. Replicate sibling sets with ``merge`` when
  that case matters.

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
from typing import Any, Generic, TypeVar

from multistore.core._hlc import HLCTimestamp, _check_node
from multistore.core._vv import Dot, DottedVersionVector, Ordering, VersionVector
from multistore.errors import InvalidValueError

__all__ = ["SiblingSet", "SiblingWrite", "Siblings", "Versioned"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Versioned(Generic[T]):
    """One version of a value: ``value`` written at ``origin``, stamped ``hlc``, history ``vv``."""

    value: T
    hlc: HLCTimestamp
    vv: VersionVector
    origin: str

    def __post_init__(self) -> None:
        if not isinstance(self.hlc, HLCTimestamp):
            raise InvalidValueError(f"Versioned.hlc must be an HLCTimestamp, got {self.hlc!r}")
        if not isinstance(self.vv, VersionVector):
            raise InvalidValueError(f"Versioned.vv must be a VersionVector, got {self.vv!r}")
        _check_node(self.origin)
        if self.vv.get_count(self.origin) == 0:
            raise InvalidValueError(
                f"the version vector {self.vv.to_dict()} of a version from {self.origin!r} "
                "must count its own event"
            )

    @property
    def dot(self) -> Dot:
        """This version's own event."""
        return Dot(self.origin, self.vv.get_count(self.origin))

    def compare(self, other: Versioned[Any]) -> Ordering:
        """How this version's history relates to ``other``'s."""
        return self.vv.compare(other.vv)

    def sort_key(self) -> tuple[HLCTimestamp, Dot]:
        """Newest-last order: HLC, then dot (deterministic across replicas)."""
        return self.hlc, self.dot

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe when ``value`` is."""
        return {
            "value": self.value,
            "hlc": str(self.hlc),
            "vv": self.vv.to_dict(),
            "origin": self.origin,
        }

    @classmethod
    def from_dict(cls, data: object) -> Versioned[Any]:
        if not isinstance(data, Mapping) or set(data) != {"value", "hlc", "vv", "origin"}:
            raise InvalidValueError(f"a version is {{value, hlc, vv, origin}}, got {data!r}")
        return cls(
            data["value"],
            HLCTimestamp.parse(data["hlc"]),
            VersionVector.from_dict(data["vv"]),
            data["origin"],
        )


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
            covered = any(
                other.dot != version.dot and other.vv.contains(version.dot) for other in given
            )
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
        _check_node(node)
        _check_limit(limit)
        dot = Dot(node, max(self._context.get_count(node), context.get_count(node)) + 1)
        dvv = DottedVersionVector(dot, context)
        version = Versioned(value, hlc, dvv.to_vv(), node)
        kept: dict[Dot, Versioned[T]] = {}
        superseded: list[Versioned[T]] = []
        for sibling_dot, sibling in self._entries.items():
            if context.contains(sibling_dot):
                superseded.append(sibling)
            else:
                kept[sibling_dot] = sibling
        kept[dot] = version
        seen = self._context.merge(context).merge(VersionVector({node: dot.counter}))
        siblings, dropped = SiblingSet._make(kept, seen).trim(limit, keep=dot)
        return SiblingWrite(
            siblings,
            version,
            dvv,
            tuple(sorted(superseded, key=Versioned.sort_key)),
            dropped,
        )

    def add(self, version: Versioned[T]) -> SiblingSet[T]:
        """Receive one version (its ``vv`` is its history); the join of this set and it."""
        return self.merge(SiblingSet([version]))

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
        return {
            "versions": [version.to_dict() for version in self.versions],
            "context": self._context.to_dict(),
        }

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
