"""Causal contexts and dot stores: the shared kernel of the causal CRDTs.

A causal CRDT (Almeida, Shoker, Baquero, "Delta state replicated data types",
2018) keeps two things: a *dot store* — the live events, each tagged with its dot
— and a *causal context* — every dot this replica has ever seen, live or not.
A dot that is in the context but not in the store was removed; so removes need
no tombstones, only the context, and the context stays compact: a version
vector plus the few dots received out of order (the "dot cloud"), folded into
the vector as soon as the gap closes.

Merge rule of two (store, context) pairs: a dot survives if both stores hold it,
or one store holds it and the other replica has never seen it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from multistore.core._vv import Dot, VersionVector
from multistore.errors import InvalidValueError

__all__ = ["CausalContext"]


class CausalContext:
    """The set of dots a replica has seen: a compact vector plus a cloud of stray dots.

    Mutable, used inside one CRDT object; :meth:`copy` before sharing.
    """

    __slots__ = ("_cloud", "_vv")

    def __init__(self, vv: Mapping[str, int] | None = None, cloud: Iterable[Dot] = ()) -> None:
        self._vv: dict[str, int] = dict(vv or {})
        self._cloud: set[Dot] = set(cloud)
        self._compact()

    def copy(self) -> CausalContext:
        new = CausalContext.__new__(CausalContext)
        new._vv = dict(self._vv)
        new._cloud = set(self._cloud)
        return new

    def contains(self, dot: Dot) -> bool:
        return dot.counter <= self._vv.get(dot.node, 0) or dot in self._cloud

    def next_dot(self, node: str) -> Dot:
        """A fresh dot for an event at ``node``: one past the greatest ``node`` dot seen."""
        top = self._vv.get(node, 0)
        for dot in self._cloud:
            if dot.node == node and dot.counter > top:
                top = dot.counter
        return Dot(node, top + 1)

    def add(self, dot: Dot) -> None:
        if dot.counter == self._vv.get(dot.node, 0) + 1:
            self._vv[dot.node] = dot.counter
            self._compact_node(dot.node)
        elif not self.contains(dot):
            self._cloud.add(dot)

    def update(self, other: CausalContext) -> None:
        """Add every dot of ``other`` (in place)."""
        for node, counter in other._vv.items():
            if counter > self._vv.get(node, 0):
                self._vv[node] = counter
        self._cloud |= other._cloud
        self._compact()

    def _compact_node(self, node: str) -> None:
        top = self._vv.get(node, 0)
        while self._cloud and Dot(node, top + 1) in self._cloud:
            top += 1
            self._cloud.discard(Dot(node, top))
        if top:
            self._vv[node] = top

    def _compact(self) -> None:
        if not self._cloud:
            return
        for node in {dot.node for dot in self._cloud}:
            self._compact_node(node)
        self._cloud = {d for d in self._cloud if d.counter > self._vv.get(d.node, 0)}

    @property
    def vv(self) -> VersionVector:
        """The contiguous part as a version vector (stray dots left out)."""
        return VersionVector(self._vv)

    @property
    def cloud(self) -> frozenset[Dot]:
        return frozenset(self._cloud)

    def size(self) -> int:
        """How many dots the context stands for."""
        return sum(self._vv.values()) + len(self._cloud)

    def dots(self) -> Iterator[Dot]:
        """Every dot in the context (there are :meth:`size` of them)."""
        for node, top in self._vv.items():
            for counter in range(1, top + 1):
                yield Dot(node, counter)
        yield from self._cloud

    def nodes(self) -> set[str]:
        return set(self._vv) | {dot.node for dot in self._cloud}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CausalContext):
            return self._vv == other._vv and self._cloud == other._cloud
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        cloud = sorted(self._cloud)
        return f"CausalContext({self._vv!r}, cloud={[str(d) for d in cloud]})"

    # Compact encoding: node names go in a table shared with the dot store. -----
    def encode(self, index: dict[str, int]) -> dict[str, Any]:
        vv = [[_index(index, node), counter] for node, counter in sorted(self._vv.items())]
        cloud = [[_index(index, d.node), d.counter] for d in sorted(self._cloud)]
        return {"vv": vv, "cloud": cloud} if cloud else {"vv": vv}

    @classmethod
    def decode(cls, data: object, nodes: list[str]) -> CausalContext:
        if not isinstance(data, Mapping) or not set(data) <= {"vv", "cloud"}:
            raise InvalidValueError(f"a causal context is {{vv, cloud}}, got {data!r}")
        vv: dict[str, int] = {}
        for pair in _pairs(data.get("vv", [])):
            dot = _dot(pair, nodes)
            vv[dot.node] = dot.counter
        cloud = [_dot(pair, nodes) for pair in _pairs(data.get("cloud", []))]
        return cls(vv, cloud)


def _index(index: dict[str, int], node: str) -> int:
    """The position of ``node`` in the shared node table, adding it when new."""
    if node not in index:
        index[node] = len(index)
    return index[node]


def _pairs(data: object) -> list[Any]:
    if not isinstance(data, list):
        raise InvalidValueError(f"expected a list of [node-index, counter] pairs, got {data!r}")
    return data


def _dot(pair: object, nodes: list[str]) -> Dot:
    """Decode ``[node-index, counter]`` against the node table."""
    if (
        not isinstance(pair, list)
        or len(pair) != 2
        or type(pair[0]) is not int
        or not 0 <= pair[0] < len(nodes)
    ):
        raise InvalidValueError(f"expected [node-index, counter] with a known node, got {pair!r}")
    return Dot(nodes[pair[0]], pair[1])


def encode_dots(dots: Iterable[Dot], index: dict[str, int]) -> list[int]:
    """Dots as a flat list ``[node-index, counter, node-index, counter, ...]``."""
    flat: list[int] = []
    for dot in sorted(dots):
        flat += (_index(index, dot.node), dot.counter)
    return flat


def decode_dots(flat: object, nodes: list[str]) -> list[Dot]:
    if not isinstance(flat, list) or len(flat) % 2:
        raise InvalidValueError(f"expected a flat list of node-index, counter pairs, got {flat!r}")
    return [_dot([flat[i], flat[i + 1]], nodes) for i in range(0, len(flat), 2)]


def decode_nodes(data: object) -> list[str]:
    if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
        raise InvalidValueError(f"expected a list of node ids, got {data!r}")
    return list(data)


def join_dots(
    mine: set[Dot], theirs: set[Dot], my_ctx: CausalContext, their_ctx: CausalContext
) -> set[Dot]:
    """The dot-set join: dots both hold, plus dots one holds that the other never saw."""
    return (
        (mine & theirs)
        | {d for d in mine if not their_ctx.contains(d)}
        | {d for d in theirs if not my_ctx.contains(d)}
    )
