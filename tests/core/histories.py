"""Random replicated histories for the CRDT property tests.

One history runs random mutations on 3–5 replicas of one CRDT kind, with random
full-state and delta syncs between them. Everything it produces — every
snapshot of every replica and every delta — is a state of the same execution
(dots are unique per event), so any of them may be merged with any other.

A history is drawn as one flat plan of small integers (cheap to generate and to
shrink) and then interpreted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from multistore.core import (
    CRDT,
    Cart,
    GCounter,
    HybridClock,
    LWWRegister,
    MVRegister,
    ORMap,
    ORSet,
    PNCounter,
)

# A mutator gets the replica, a small random int to pick its arguments, and the history.
Mutator = Callable[[Any, int, "History"], CRDT]

ELEMENTS: list[Any] = ["a", "b", "c", "d", 1, 2]
KEYS = ["k1", "k2", "k3"]

Step = tuple[int, int, int, int]  # replica, action, argument, wall-clock step
PLANS = st.tuples(
    st.integers(3, 5),
    st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 9), st.integers(0, 99), st.integers(-50, 100)),
        min_size=1,
        max_size=25,
    ),
)


@dataclass
class History:
    replicas: list[Any]
    clocks: list[HybridClock] = field(default_factory=list)
    deltas: list[CRDT] = field(default_factory=list)
    snapshots: list[CRDT] = field(default_factory=list)
    time: int = 1_000

    def pool(self) -> list[CRDT]:
        return self.snapshots + self.deltas + [r.copy() for r in self.replicas]


@dataclass(frozen=True)
class Kind:
    name: str
    make: Callable[[str], CRDT]
    mutators: tuple[Mutator, ...]

    def __repr__(self) -> str:
        return self.name


def _orset(s: ORSet[Any], arg: int, h: History) -> CRDT:
    element = ELEMENTS[arg % len(ELEMENTS)]
    if arg % 7 == 0:
        return s.clear()
    return s.add(element) if arg % 3 else s.remove(element)


def _lww(r: LWWRegister[int], arg: int, h: History) -> CRDT:
    return r.assign(arg % 10, h.clocks[int(r.node[1:])].now())


def _map_counter(m: ORMap[str, PNCounter], arg: int, h: History) -> CRDT:
    key = KEYS[arg % len(KEYS)]
    if arg % 5 == 0:
        return m.remove(key)
    return m.update(key, lambda c: c.add(arg % 7 - 3 or 1))


def _map_set(m: ORMap[str, ORSet[Any]], arg: int, h: History) -> CRDT:
    key, element = KEYS[arg % len(KEYS)], ELEMENTS[arg // 3 % len(ELEMENTS)]
    if arg % 5 == 0:
        return m.remove(key)
    return m.update(key, lambda s: s.add(element) if arg % 2 else s.remove(element))


def _map_mv(m: ORMap[str, MVRegister[int]], arg: int, h: History) -> CRDT:
    key = KEYS[arg % len(KEYS)]
    if arg % 5 == 0:
        return m.remove(key)
    return m.update(key, lambda r: r.assign(arg // 3))


def _cart(c: Cart, arg: int, h: History) -> CRDT:
    item = KEYS[arg % len(KEYS)]
    if arg % 5 == 0:
        return c.remove(item)
    return c.add(item, arg % 7 - 2 or 3)


KINDS = [
    Kind("gcounter", GCounter, (lambda c, a, h: c.increment(a % 5 + 1),)),
    Kind(
        "pncounter",
        PNCounter,
        (lambda c, a, h: c.add(a % 9 - 4 or 1),),
    ),
    Kind("lwwregister", LWWRegister, (_lww,)),
    Kind("mvregister", MVRegister, (lambda r, a, h: r.assign(a % 10),)),
    Kind("orset", ORSet, (_orset,)),
    Kind("ormap-counter", lambda n: ORMap(n, PNCounter), (_map_counter,)),
    Kind("ormap-orset", lambda n: ORMap(n, ORSet), (_map_set,)),
    Kind("ormap-mvregister", lambda n: ORMap(n, MVRegister), (_map_mv,)),
    Kind("cart", Cart, (_cart,)),
]


def run_history(plan: tuple[int, list[Step]], kind: Kind) -> History:
    """Interpret a drawn plan: per step, mutate (60%), sync a full state, or sync a delta."""
    n, steps = plan
    h = History(replicas=[kind.make(f"n{i}") for i in range(n)])
    h.clocks = [HybridClock(f"n{i}", now_ms=lambda: h.time) for i in range(n)]
    for who, action, arg, tick in steps:
        replica = h.replicas[who % n]
        if action < 6:
            mutate = kind.mutators[arg % len(kind.mutators)]
            h.deltas.append(mutate(replica, arg, h))
        elif action < 8:
            replica.apply(h.replicas[arg % n])
        elif h.deltas:
            replica.apply(h.deltas[arg % len(h.deltas)])
        h.time = max(0, h.time + tick)  # the wall clock may go backwards
        h.snapshots.append(replica.copy())
    return h
