"""Merge laws and convergence, for every CRDT, on random replicated histories."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multistore.core import CRDT, GCounter, ORMap, ORSet, PNCounter, crdt_from_bytes, crdt_from_dict
from multistore.errors import InvalidValueError
from tests.core.histories import KINDS, PLANS, Kind, Step, run_history

SETTINGS = settings(max_examples=100, deadline=None)
PICKS = st.lists(st.integers(0, 10_000), min_size=3, max_size=3)

Plan = tuple[int, list[Step]]


@pytest.mark.parametrize("kind", KINDS, ids=repr)
@SETTINGS
@given(plan=PLANS, picks=PICKS)
def test_merge_is_commutative_associative_idempotent(
    kind: Kind, plan: Plan, picks: list[int]
) -> None:
    pool = run_history(plan, kind).pool()
    a, b, c = (pool[i % len(pool)] for i in picks)
    before = [x.copy() for x in (a, b, c)]
    ab = a.merge(b)
    assert ab == b.merge(a)
    assert ab.value == b.merge(a).value
    assert ab.merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a
    # the join is an upper bound: merging either input again changes nothing
    assert ab.merge(a) == ab
    assert ab.merge(b) == ab
    # merge is pure: the inputs are unchanged
    assert [a, b, c] == before


@pytest.mark.parametrize("kind", KINDS, ids=repr)
@SETTINGS
@given(plan=PLANS, rnd=st.randoms(use_true_random=False))
def test_replicas_converge_whatever_the_delivery_order(
    kind: Kind, plan: Plan, rnd: random.Random
) -> None:
    """N fresh replicas get every delta (some twice) in their own order: all end equal,
    and equal to the join of the original replicas; full states in any order too."""
    history = run_history(plan, kind)
    expected = history.replicas[0].copy()
    for replica in history.replicas[1:]:
        expected.apply(replica)
    for i in range(len(history.replicas)):
        deliveries = list(history.deltas)
        if history.deltas:
            deliveries += rnd.choices(history.deltas, k=rnd.randint(0, 5))
        rnd.shuffle(deliveries)
        fresh = kind.make(f"n{i}")
        for delta in deliveries:
            fresh.apply(delta)
        assert fresh == expected
        assert fresh.value == expected.value
    states = history.snapshots + [r.copy() for r in history.replicas]
    rnd.shuffle(states)
    fresh = kind.make("x")
    for state in states:
        fresh.apply(state)
    assert fresh == expected


@pytest.mark.parametrize("kind", KINDS, ids=repr)
@SETTINGS
@given(plan=PLANS, picks=PICKS)
def test_to_dict_round_trips_and_a_restarted_replica_keeps_going(
    kind: Kind, plan: Plan, picks: list[int]
) -> None:
    history = run_history(plan, kind)
    pool = history.pool()
    state, other = pool[picks[0] % len(pool)], pool[picks[1] % len(pool)]
    text = json.dumps(state.to_dict(), allow_nan=False)
    back = type(state).from_dict(json.loads(text), node=state.node)
    assert back == state
    assert back.value == state.value
    assert crdt_from_dict(json.loads(text), node="elsewhere") == state
    assert back.merge(other) == state.merge(other)
    # the wire form too, and the older wire form (bare JSON text) still reads
    wire = type(state).from_bytes(state.to_bytes(), node=state.node)
    assert wire == state and wire.value == state.value
    assert crdt_from_bytes(state.to_bytes(), node="elsewhere") == state
    assert wire.merge(other) == state.merge(other)
    assert type(state).from_bytes(state.to_json().encode(), node="x") == state
    # a replica restarted from its saved state makes events that never reuse a dot
    original = history.replicas[picks[2] % len(history.replicas)]
    restarted = type(original).from_dict(original.to_dict(), node=original.node)
    delta = kind.mutators[0](restarted, picks[2], history)
    assert restarted.merge(original) == restarted
    for replica in history.replicas:
        assert replica.merge(delta) == delta.merge(replica)
        assert replica.merge(delta).merge(restarted) == replica.merge(restarted)


def test_merging_different_crdt_types_is_refused() -> None:
    with pytest.raises(InvalidValueError, match="cannot merge"):
        GCounter("a").merge(PNCounter("a"))  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="cannot merge"):
        ORMap("a", PNCounter).merge(ORMap("a", ORSet))  # type: ignore[arg-type]


def test_crdt_base_is_abstract() -> None:
    with pytest.raises(TypeError):
        CRDT("a")  # type: ignore[abstract]


def test_from_dict_rejects_the_wrong_type_and_unknown_types() -> None:
    state = ORSet[str]("a")
    state.add("x")
    with pytest.raises(InvalidValueError, match="expected a 'gcounter' state"):
        GCounter.from_dict(state.to_dict(), node="a")
    with pytest.raises(InvalidValueError, match="unknown CRDT type 'nope'"):
        crdt_from_dict({"type": "nope"}, node="a")
    bad = state.to_dict()
    bad["entries"] = [["x", 0, 9]]  # a dot the context never saw
    with pytest.raises(InvalidValueError, match="not in the state's context"):
        ORSet.from_dict(bad, node="a")
