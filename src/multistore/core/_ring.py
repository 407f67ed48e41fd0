"""Consistent hashing with virtual nodes (Karger et al. 1997; Dynamo 2007).

Every node owns ``vnodes`` points ("tokens") on a ring of 2**64 positions. A key
hashes to a position and belongs to the first token at or after it, going
clockwise; its *preference list* is the first ``n`` distinct nodes met from there
on. Adding or removing one of M nodes moves only the keys next to that node's
tokens, about 1/M of them, and virtual nodes spread that share evenly over the
remaining nodes.

Tokens and key positions come from BLAKE2b (8 bytes), so every process computes
the same ring from the same node names.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from multistore.errors import InvalidValueError

__all__ = ["RING_SIZE", "Arc", "HashRing", "Move", "token_of"]

RING_SIZE: Final = 2**64
"""Positions on the ring: tokens are ints in ``[0, RING_SIZE)``."""


def token_of(key: str | bytes) -> int:
    """The ring position of a key (or of a node's virtual node name)."""
    data = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class Arc:
    """The closed token range ``[lo, hi]`` and the nodes that replicate it, in order."""

    lo: int
    hi: int
    replicas: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Move:
    """A token range whose replicas differ between two rings (see :meth:`HashRing.moves`)."""

    lo: int
    hi: int
    sources: tuple[str, ...]
    """Its replicas on the old ring."""
    gained: tuple[str, ...]
    """Nodes that replicate it on the new ring only: they must receive its records."""
    lost: tuple[str, ...]
    """Nodes that replicate it on the old ring only."""


class HashRing:
    """An immutable ring of nodes; :meth:`add` and :meth:`remove` return new rings."""

    __slots__ = ("_nodes", "_owners", "_tokens", "_vnodes")

    def __init__(self, nodes: Iterable[str] = (), *, vnodes: int = 64) -> None:
        if type(vnodes) is not int or vnodes < 1:
            raise InvalidValueError(f"vnodes must be an int >= 1, got {vnodes!r}")
        names = list(nodes)
        for name in names:
            if not isinstance(name, str) or not name:
                raise InvalidValueError(f"a node name must be a non-empty string, got {name!r}")
        if len(set(names)) != len(names):
            raise InvalidValueError(f"node names must be unique, got {names}")
        self._vnodes = vnodes
        self._nodes = tuple(sorted(names))
        points = sorted((token_of(f"{node}#{i}"), node) for node in names for i in range(vnodes))
        self._tokens = [token for token, _ in points]
        self._owners = [node for _, node in points]

    @property
    def nodes(self) -> tuple[str, ...]:
        """The node names, sorted."""
        return self._nodes

    @property
    def vnodes(self) -> int:
        return self._vnodes

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._nodes

    def __repr__(self) -> str:
        return f"HashRing({list(self._nodes)!r}, vnodes={self._vnodes})"

    def add(self, node: str) -> HashRing:
        if node in self._nodes:
            raise InvalidValueError(f"node {node!r} is already on the ring")
        return HashRing([*self._nodes, node], vnodes=self._vnodes)

    def remove(self, node: str) -> HashRing:
        if node not in self._nodes:
            raise InvalidValueError(f"node {node!r} is not on the ring")
        return HashRing([n for n in self._nodes if n != node], vnodes=self._vnodes)

    def walk(self, key: str | bytes) -> Iterator[str]:
        """Every node once, in ring order from the key's position (the preference list
        first, then the fallbacks a sloppy quorum uses)."""
        yield from self._walk_from(token_of(key))

    def _walk_from(self, token: int) -> Iterator[str]:
        if not self._tokens:
            return
        start = bisect.bisect_left(self._tokens, token)
        seen: set[str] = set()
        total = len(self._tokens)
        for i in range(total):
            node = self._owners[(start + i) % total]
            if node not in seen:
                seen.add(node)
                yield node
                if len(seen) == len(self._nodes):
                    return

    def preference_list(self, key: str | bytes, n: int) -> tuple[str, ...]:
        """The ``n`` distinct nodes that hold ``key`` (fewer when the ring is smaller)."""
        if type(n) is not int or n < 1:
            raise InvalidValueError(f"the replication factor must be an int >= 1, got {n!r}")
        result: list[str] = []
        for node in self.walk(key):
            result.append(node)
            if len(result) == n:
                break
        return tuple(result)

    def arcs(self, n: int) -> list[Arc]:
        """The ring cut into closed token ranges, each with its ``n`` replicas.

        Adjacent ranges with the same replicas are joined; the range that wraps
        past the top of the ring is split in two, so ``lo <= hi`` always.
        """
        if not self._tokens:
            return []
        arcs: list[Arc] = []
        for i, token in enumerate(self._tokens):
            previous = self._tokens[i - 1] if i else self._tokens[-1]
            replicas: list[str] = []
            for node in self._walk_from(token):
                replicas.append(node)
                if len(replicas) == n:
                    break
            # the first token also owns the wrap-around past the top of the ring
            wrap = [(0, token), (previous + 1, RING_SIZE - 1)]
            pieces = [(previous + 1, token)] if i else wrap
            for lo, hi in pieces:
                if lo <= hi:
                    arcs.append(Arc(lo, hi, tuple(replicas)))
        arcs.sort(key=lambda arc: arc.lo)
        joined: list[Arc] = []
        for arc in arcs:
            if joined and joined[-1].replicas == arc.replicas and joined[-1].hi + 1 == arc.lo:
                joined[-1] = Arc(joined[-1].lo, arc.hi, arc.replicas)
            else:
                joined.append(arc)
        return joined

    def moves(self, new: HashRing, n: int) -> list[Move]:
        """The token ranges whose ``n`` replicas differ on ``new`` (a ring with a node
        added or removed), in token order, adjacent ranges with the same change joined.
        Every key whose preference list differs between the two rings lies in one."""
        old_arcs, new_arcs = self.arcs(n), new.arcs(n)
        moves: list[Move] = []
        i = j = 0
        lo = 0
        while i < len(old_arcs) and j < len(new_arcs):
            before, after = old_arcs[i], new_arcs[j]
            hi = min(before.hi, after.hi)
            gained = tuple(x for x in after.replicas if x not in before.replicas)
            lost = tuple(x for x in before.replicas if x not in after.replicas)
            if gained or lost:
                last = moves[-1] if moves else None
                if (
                    last is not None
                    and last.hi + 1 == lo
                    and (last.sources, last.gained, last.lost) == (before.replicas, gained, lost)
                ):
                    moves[-1] = Move(last.lo, hi, last.sources, gained, lost)
                else:
                    moves.append(Move(lo, hi, before.replicas, gained, lost))
            lo = hi + 1
            i += before.hi == hi
            j += after.hi == hi
        return moves

    def shared_arcs(self, a: str, b: str, n: int) -> list[tuple[int, int]]:
        """The token ranges that both ``a`` and ``b`` replicate (for anti-entropy)."""
        return [(arc.lo, arc.hi) for arc in self.arcs(n) if a in arc.replicas and b in arc.replicas]
