"""How one received change changes a key, for a multi-master node.

:class:`Applier` holds a node's resolver, clock and id, and works on a
:class:`~._mm_work.Work` (the states and rows of one transaction): it takes a
change that is next in its origin's order — logs it, and applies it, holds it
back for the skew guard, or sets it aside — and records the conflicts it meets.
It does no I/O of its own; :mod:`._multimaster` runs the transactions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from multistore.core import (
    CRDT,
    DELETED,
    ClockSkewError,
    CRDTResolver,
    HLCTimestamp,
    HybridClock,
    Resolution,
    Resolver,
    SiblingSet,
    Versioned,
    crdt_from_dict,
)
from multistore.errors import InvalidValueError, MultistoreError
from multistore.replication._changelog import Change, dumps, is_stub
from multistore.replication._mm_work import Work

__all__ = ["Applier", "Counters", "Opaque", "decode_item", "encode_crdt", "plain"]

_APPLY_ERRORS = (MultistoreError, ValueError, TypeError, KeyError)
"""What applying a well-formed change can raise when it does not fit the key (set aside)."""


_ZERO = HLCTimestamp(0, 0, "unknown")
"""The log timestamp of a change whose body could not be read."""


@dataclass
class Counters:
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    conflicts: int = 0
    set_aside: int = 0
    deferred: int = 0
    superseded: int = 0

    def add(self, other: Counters) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True, slots=True)
class Opaque:
    """A received change taken without being applied: its identity, its body, and why it
    could not be read (``error``), or None for a stub of a superseded change."""

    origin: str
    seq: int
    key: str
    body: str
    error: str | None


class Applier:
    """Applies received changes to a node's keys (see the module docstring)."""

    def __init__(self, node_id: str, resolver: Resolver, clock: HybridClock) -> None:
        self.node_id = node_id
        self.resolver = resolver
        self.clock = clock
        self.crdt = isinstance(resolver, CRDTResolver)

    def take(
        self,
        work: Work,
        change: Change | Opaque,
        item: Change | Mapping[str, Any],
        pending: dict[tuple[str, str], int],
        conflict_id: int,
        counters: Counters,
    ) -> int:
        """Log one change that is next in its origin's order, then apply, hold or set it aside."""
        if isinstance(change, Opaque):
            work.append(change.origin, change.seq, change.key, _ZERO, change.body)
            if change.error is None:
                counters.superseded += 1  # a stub: a later change of its origin covers it
                return conflict_id
            counters.set_aside += 1
            return self._set_aside(work, change, change.error, conflict_id)
        ident = (change.origin, change.key)
        body = ""
        if ident in pending or work.logs(change.origin, change.seq):
            body = dumps(change.to_dict() if isinstance(item, Change) else item)
            work.append(change.origin, change.seq, change.key, change.hlc, body)
        skew = 0
        if ident not in pending:
            try:
                self.clock.observe(change.hlc)
            except ClockSkewError as exc:
                skew = max(exc.skew_ms, 1)
                counters.rejected += 1
            else:
                return self.apply(work, change, conflict_id, counters)
        pending[ident] = pending.get(ident, 0) + 1
        body = body or dumps(change.to_dict() if isinstance(item, Change) else item)
        work.held.append(
            {"o": change.origin, "s": change.seq, "k": change.key, "skew": skew, "body": body}
        )
        return conflict_id

    def apply(self, work: Work, change: Change, conflict_id: int, counters: Counters) -> int:
        try:
            if self.crdt:
                recorded = self._apply_crdt(work, change, conflict_id)
            else:
                recorded = self._applyplain(work, change, conflict_id)
        except _APPLY_ERRORS as exc:
            counters.set_aside += 1
            return self._set_aside(work, change, f"{type(exc).__name__}: {exc}", conflict_id)
        counters.applied += 1
        counters.conflicts += recorded - conflict_id
        return recorded

    def _applyplain(self, work: Work, change: Change, conflict_id: int) -> int:
        before: SiblingSet[Any] = work.get(change.key) or SiblingSet()
        if before.context.contains(change.version.dot):
            return conflict_id  # this version, or one that superseded it, is already here
        after = before.add(change.version)
        work.set(change.key, after)
        if len(after) < 2:
            return conflict_id  # nothing concurrent met: the remote simply superseded
        return self.record(work, change, after, conflict_id)

    def _apply_crdt(self, work: Work, change: Change, conflict_id: int) -> int:
        local: Versioned[Any] | None = work.get(change.key)
        remote = self.decode_crdt(change.version.to_dict())
        if local is None:
            work.set(change.key, remote)
            return conflict_id
        resolution = self.resolver.resolve(local, remote)
        winner = resolution.winner
        assert winner is not None
        if remote.dot == local.dot:  # same dot: the candidates were deduplicated; join anyway
            winner = Versioned(local.value.merge(remote.value), local.hlc, local.vv, local.origin)
        work.set(change.key, winner)
        if not resolution.concurrent:
            return conflict_id
        body = {"losers": [], "values": [plain(winner.value)]}
        return self._conflict_row(work, change, "merged", body, conflict_id)

    def record(
        self, work: Work, change: Change, siblings: SiblingSet[Any], conflict_id: int
    ) -> int:
        """Record the concurrent versions ``change`` met, as the resolver shows them."""
        resolution, error = self.view(siblings)
        shown = resolution.values
        if error is not None:
            kind = "unresolved"
        elif resolution.losers:
            kind = "lost"
        else:
            kind = "siblings" if len(shown) > 1 else "merged"
        body = {
            "losers": [loser.to_dict() for loser in resolution.losers],
            "values": [plain(v) for v in shown if v is not DELETED],
            "error": error,
        }
        return self._conflict_row(work, change, kind, body, conflict_id)

    def _set_aside(self, work: Work, change: Change | Opaque, error: str, conflict_id: int) -> int:
        body = {"losers": [], "values": [], "error": error}
        return self._conflict_row(work, change, "set_aside", body, conflict_id)

    @staticmethod
    def _conflict_row(
        work: Work, change: Change | Opaque, kind: str, body: Any, conflict_id: int
    ) -> int:
        work.conflicts.append(
            {
                "id": conflict_id + 1,
                "k": change.key,
                "kind": kind,
                "o": change.origin,
                "s": change.seq,
                "body": dumps(body),
            }
        )
        return conflict_id + 1

    def view(self, siblings: SiblingSet[Any]) -> tuple[Resolution[Any], str | None]:
        """The resolver's view of a key's causal state, and the error if the resolver (an
        application's merge function) raised: then the siblings are shown as they are."""
        newest = siblings.newest
        assert newest is not None
        try:
            return self.resolver.resolve(siblings, newest), None
        except Exception as exc:  # the application's merge function: any error
            return Resolution(None, (), siblings, concurrent=True), f"{type(exc).__name__}: {exc}"

    def decode_crdt(self, data: Any) -> Versioned[Any]:
        version = Versioned.from_dict(data)
        value = crdt_from_dict(version.value, node=self.node_id)
        return Versioned(value, version.hlc, version.vv, version.origin)

    def decoder(self) -> Callable[[Any], Any]:
        return self.decode_crdt if self.crdt else SiblingSet.from_dict

    def encoder(self) -> Callable[[Any], Any]:
        return encode_crdt if self.crdt else SiblingSet.to_dict


def decode_item(item: Change | Mapping[str, Any]) -> Change | Opaque | None:
    """A received change; an :class:`Opaque` for a stub, or when only its identity
    could be read; None when not even that."""
    if isinstance(item, Change):
        return item
    error: str | None = None
    if not is_stub(item):
        try:
            return Change.from_dict(item)
        except (InvalidValueError, ValueError, TypeError, KeyError) as exc:
            error = f"{type(exc).__name__}: {exc}"
    origin = item.get("origin") if isinstance(item, Mapping) else None
    seq = item.get("seq") if isinstance(item, Mapping) else None
    if not isinstance(origin, str) or not origin or type(seq) is not int or seq < 1:
        return None
    key = item.get("key") if isinstance(item, Mapping) else None
    try:
        body = dumps(item)
    except InvalidValueError:
        body = dumps({"origin": origin, "seq": seq})
    return Opaque(origin, seq, key if isinstance(key, str) else "", body, error)


def encode_crdt(version: Versioned[Any]) -> dict[str, Any]:
    return Versioned(version.value.to_dict(), version.hlc, version.vv, version.origin).to_dict()


def plain(value: Any) -> Any:
    return value.value if isinstance(value, CRDT) else value
