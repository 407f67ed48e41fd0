"""Conflict resolution for multi-master replication, as strategy objects.

A replicator that receives a remote version of a key calls
``resolver.resolve(local, remote)`` and stores ``resolution.state``; the
``losers`` are concurrent versions that were discarded — lost updates, which it
should record as conflicts. Versions that are merely older (causally before the
result) are superseded, not lost, and are not reported.

* :class:`LWW` — the greatest HLC timestamp wins (ties broken by node id, which is
  part of the timestamp). Simple and convergent; silently loses concurrent writes.
* :class:`MergeFunction` — an application function merges concurrent values; a
  causally newer version simply wins. A concurrent delete reaches the function
  as :data:`~multistore.core.DELETED`.
* :class:`KeepSiblings` — keep every concurrent version for the application to
  merge on its next write, up to a limit.
* :class:`CRDTResolver` — values are CRDT states; merge them. Nothing is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from multistore.core._crdt import CRDT
from multistore.core._siblings import DELETED, SiblingSet, Tombstone, Versioned, _check_limit
from multistore.core._vv import Ordering, VersionVector
from multistore.errors import InvalidValueError, UsageError

__all__ = [
    "LWW",
    "CRDTResolver",
    "KeepSiblings",
    "MergeFunction",
    "Resolution",
    "Resolver",
    "merge_carts",
]

T = TypeVar("T")
C = TypeVar("C", bound=CRDT)


@dataclass(frozen=True, slots=True)
class Resolution(Generic[T]):
    """The outcome of resolving a remote version against the local state."""

    winner: Versioned[T] | None
    """The single version to store, or ``None`` when several siblings are kept."""
    losers: tuple[Versioned[T], ...] = ()
    """Concurrent versions discarded (lost updates); record them as conflicts."""
    siblings: SiblingSet[T] | None = None
    """The sibling set to store, when the strategy keeps siblings."""
    concurrent: bool = False
    """True when concurrent versions met (a conflict, resolved or kept)."""

    @property
    def state(self) -> Versioned[T] | SiblingSet[T]:
        """What to store for the key now."""
        if self.siblings is not None:
            return self.siblings
        assert self.winner is not None
        return self.winner

    @property
    def values(self) -> tuple[T, ...]:
        """The value, or the sibling values, now current."""
        if self.siblings is not None:
            return self.siblings.values
        assert self.winner is not None
        return (self.winner.value,)

    @property
    def value(self) -> T:
        """The one current value; :class:`UsageError` when siblings were kept."""
        values = self.values
        if len(values) != 1:
            raise UsageError(f"{len(values)} concurrent siblings were kept; read .values instead")
        return values[0]


@runtime_checkable
class Resolver(Protocol):
    """A conflict-resolution strategy; see the module docstring."""

    def resolve(
        self, local: Versioned[Any] | SiblingSet[Any], remote: Versioned[Any]
    ) -> Resolution[Any]:
        """Resolve ``remote`` against the ``local`` version or siblings of the same key."""
        ...


def _candidates(local: Versioned[T] | SiblingSet[T], remote: Versioned[T]) -> list[Versioned[T]]:
    """Local version(s) and the remote one, one per dot, oldest first."""
    if isinstance(local, SiblingSet):
        versions = list(local.versions)
    elif isinstance(local, Versioned):
        versions = [local]
    else:
        raise InvalidValueError(f"local must be a Versioned or a SiblingSet, got {local!r}")
    if not isinstance(remote, Versioned):
        raise InvalidValueError(f"remote must be a Versioned, got {remote!r}")
    by_dot = {version.dot: version for version in versions}
    by_dot.setdefault(remote.dot, remote)
    return sorted(by_dot.values(), key=Versioned.sort_key)


def _maximal(versions: list[Versioned[T]]) -> list[Versioned[T]]:
    """The versions no other version causally follows (mutually concurrent), oldest first."""
    heads = []
    for v in versions:
        for o in versions:
            if o is v or not o.descends(v):
                continue
            if not v.descends(o) or o.sort_key() > v.sort_key():
                break  # o is strictly newer, or the same history and later in the order
        else:
            heads.append(v)
    return heads


def _combined(versions: list[Versioned[Any]], value: T) -> Versioned[T]:
    """A version holding ``value`` whose history is the union of ``versions``."""
    newest = max(versions, key=Versioned.sort_key)
    vv = VersionVector()
    for version in versions:
        vv = vv.merge(version.vv)
    return Versioned(value, newest.hlc, vv, newest.origin)


class LWW:
    """Last writer wins: the greatest HLC timestamp (then node id) is kept.

    A pure maximum over a total order, so any delivery order converges. The
    version vectors only classify the others: concurrent ones are ``losers``.
    Pair it with the clock's skew guard: a node whose clock runs ahead wins
    every conflict for as long as it does.
    """

    def resolve(self, local: Versioned[T] | SiblingSet[T], remote: Versioned[T]) -> Resolution[T]:
        versions = _candidates(local, remote)
        winner = versions[-1]
        losers = tuple(v for v in versions[:-1] if v.compare(winner) is Ordering.CONCURRENT)
        return Resolution(winner, losers, concurrent=bool(losers))

    def __repr__(self) -> str:
        return "LWW()"


class MergeFunction(Generic[T]):
    """Merge concurrent values with an application function ``fn(a, b) -> merged``.

    Applied only to concurrent versions (oldest first, folded left); a version
    that causally follows the others simply wins. The merged version's history
    is the union of the inputs' and its HLC the greatest of theirs, so replicas
    merging the same versions produce the same version when ``fn`` is
    commutative and associative. A state merge cannot tell "removed" from "never
    added": with a max/union merge such as :func:`merge_carts` an item removed on
    one side comes back if the other side still had it (use the :class:`Cart`
    CRDT when removes must stick).

    **Deletes.** When concurrent versions include deletes, ``fn`` gets
    :data:`~multistore.core.DELETED` once, as the first value of the fold, then
    the live values; it may return ``DELETED`` to keep the key deleted. When
    every concurrent version is a delete, ``fn`` is not called.
    """

    def __init__(self, fn: Callable[[T, T], T]) -> None:
        if not callable(fn):
            raise InvalidValueError(f"MergeFunction needs a callable, got {fn!r}")
        self.fn = fn

    def resolve(self, local: Versioned[T] | SiblingSet[T], remote: Versioned[T]) -> Resolution[T]:
        heads = _maximal(_candidates(local, remote))
        if len(heads) == 1:
            return Resolution(heads[0])
        values: list[Any] = [v.value for v in heads if v.value is not DELETED]
        if len(values) < len(heads):
            values.insert(0, DELETED)
        value = values[0]
        for other in values[1:]:
            value = self.fn(value, other)
        return Resolution(_combined(heads, value), concurrent=True)

    def __repr__(self) -> str:
        return f"MergeFunction({getattr(self.fn, '__name__', self.fn)!r})"


class KeepSiblings:
    """Keep concurrent versions as siblings for the application to merge later.

    Superseded versions are dropped. When more than ``limit`` siblings remain,
    the newest ``limit`` by HLC are kept and the others returned as losers;
    their dots stay in the set's context, so the drop replicates like an
    overwrite. The newest sibling is never dropped.
    """

    def __init__(self, limit: int | None = None) -> None:
        _check_limit(limit)
        self.limit = limit

    def resolve(self, local: Versioned[T] | SiblingSet[T], remote: Versioned[T]) -> Resolution[T]:
        if isinstance(local, Versioned):
            local = SiblingSet([local])
        elif not isinstance(local, SiblingSet):
            raise InvalidValueError(f"local must be a Versioned or a SiblingSet, got {local!r}")
        merged = local.add(remote)
        siblings, dropped = merged.trim(self.limit)
        winner = siblings.versions[0] if len(siblings) == 1 else None
        return Resolution(winner, dropped, siblings, concurrent=len(merged) > 1)

    def __repr__(self) -> str:
        return f"KeepSiblings(limit={self.limit!r})"


class CRDTResolver:
    """Values are CRDT states: merge them (nothing is ever lost)."""

    def resolve(self, local: Versioned[C] | SiblingSet[C], remote: Versioned[C]) -> Resolution[C]:
        versions = _candidates(local, remote)
        state = versions[0].value
        if not isinstance(state, CRDT):
            raise InvalidValueError(f"CRDTResolver needs CRDT values, got {type(state).__name__}")
        merged = state.copy()
        for version in versions[1:]:
            merged.apply(version.value)
        concurrent = len(_maximal(versions)) > 1
        return Resolution(_combined(versions, merged), concurrent=concurrent)

    def __repr__(self) -> str:
        return "CRDTResolver()"


def merge_carts(
    a: Mapping[str, Any] | Tombstone, b: Mapping[str, Any] | Tombstone
) -> dict[str, Any]:
    """The seed's cart merge: the union of the items, the larger quantity of each.

    Carts are ``{"items": {item_id: quantity}}``. Commutative, associative and
    idempotent, so it converges, but a removed item comes back while another
    replica still has it. A delete (:data:`~multistore.core.DELETED`) counts as
    an empty cart: an edit concurrent with it survives, whole.
    """
    merged: dict[str, int] = {}
    for cart in (a, b):
        if cart is DELETED:
            continue
        items = cart.get("items") if isinstance(cart, Mapping) else None
        if not isinstance(items, Mapping):
            raise InvalidValueError(f"a cart is {{'items': {{item: quantity}}}}, got {cart!r}")
        for item, qty in items.items():
            if type(qty) is not int:
                raise InvalidValueError(f"quantity of {item!r} must be an int, got {qty!r}")
            merged[item] = max(merged[item], qty) if item in merged else qty
    return {"items": dict(sorted(merged.items()))}
