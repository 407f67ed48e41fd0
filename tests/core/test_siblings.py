"""The sibling store: writes with a causal context, merge laws, exactness, the sibling limit."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multistore.core import (
    DELETED,
    HLCTimestamp,
    KeepSiblings,
    Ordering,
    Siblings,
    SiblingSet,
    Tombstone,
    Versioned,
    VersionVector,
)
from multistore.errors import InvalidValueError

SETTINGS = settings(max_examples=100, deadline=None)
STEPS = st.lists(
    st.tuples(st.integers(0, 9), st.integers(0, 4), st.integers(0, 4), st.integers(0, 999)),
    min_size=1,
    max_size=25,
)


class Run:
    """Replicas of one key, each at node n<i>, with clients reading and writing through them."""

    def __init__(self, n: int) -> None:
        self.replicas: list[SiblingSet[int]] = [SiblingSet() for _ in range(n)]
        self.reads: list[VersionVector] = [VersionVector()]  # contexts clients have read
        self.written: list[Versioned[int]] = []
        self.write_contexts: list[VersionVector] = []
        self.snapshots: list[SiblingSet[int]] = []
        self.time = 0

    def play(self, steps: list[tuple[int, int, int, int]], *, with_add: bool) -> Run:
        n = len(self.replicas)
        for action, i, j, k in steps:
            i, j = i % n, j % n
            if action < 6:  # a client writes through replica i, based on some earlier read
                context = self.reads[k % len(self.reads)]
                self.time += 1
                write = self.replicas[i].write(
                    len(self.written),
                    node=f"n{i}",
                    hlc=HLCTimestamp(self.time, 0, f"n{i}"),
                    context=context,
                )
                self.replicas[i] = write.siblings
                self.written.append(write.version)
                self.write_contexts.append(context)
            elif action < 8 or not (with_add and self.written):
                self.replicas[i] = self.replicas[i].merge(self.replicas[j])
            else:
                self.replicas[i] = self.replicas[i].add(self.written[k % len(self.written)])
            self.reads.append(self.replicas[i].context)
            self.snapshots.append(self.replicas[i])
        return self


@SETTINGS
@given(
    n=st.integers(3, 5),
    steps=STEPS,
    with_add=st.booleans(),
    picks=st.lists(st.integers(0, 999), min_size=3, max_size=3),
)
def test_sibling_merge_is_commutative_associative_idempotent(
    n: int, steps: list[tuple[int, int, int, int]], with_add: bool, picks: list[int]
) -> None:
    run = Run(n).play(steps, with_add=with_add)
    pool = run.snapshots
    a, b, c = (pool[p % len(pool)] for p in picks)
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a


@SETTINGS
@given(n=st.integers(3, 5), steps=STEPS, rnd=st.randoms(use_true_random=False))
def test_exactly_the_versions_no_write_superseded_survive(
    n: int, steps: list[tuple[int, int, int, int]], rnd: random.Random
) -> None:
    """After full sync, in any order, the siblings are exactly the written versions whose
    dot no later write's context covered: nothing concurrent is lost, nothing stale kept."""
    run = Run(n).play(steps, with_add=False)
    expected = {
        v.dot for v in run.written if not any(ctx.contains(v.dot) for ctx in run.write_contexts)
    }
    states = list(run.replicas) + run.snapshots
    rnd.shuffle(states)
    final: SiblingSet[int] = SiblingSet()
    for state in states:
        final = final.merge(state)
    assert {v.dot for v in final} == expected
    for v in final:
        for w in final:
            if v is not w:
                assert v.compare(w) is not Ordering.EQUAL


def _ts(t: int, node: str = "s") -> HLCTimestamp:
    return HLCTimestamp(t, 0, node)


def test_a_write_supersedes_what_its_context_covers_and_keeps_the_rest() -> None:
    store: SiblingSet[str] = SiblingSet()
    first = store.write("v1", node="s", hlc=_ts(1), context=VersionVector())
    store = first.siblings
    read = store.context  # client 1 reads v1
    store = store.write("v2", node="s", hlc=_ts(2), context=VersionVector()).siblings  # blind
    assert store.values == ("v1", "v2")
    result = store.write("v3", node="s", hlc=_ts(3), context=read)
    assert result.superseded == (first.version,)  # client 1 saw v1 only
    assert result.siblings.values == ("v2", "v3")  # v2 was concurrent with it
    assert result.dropped == ()
    final = result.siblings.write("v4", node="s", hlc=_ts(4), context=result.siblings.context)
    assert final.siblings.values == ("v4",)


def test_two_clients_with_the_same_read_both_survive_through_one_server() -> None:
    """The dotted-version-vector property: a plain per-server vector would call the
    second write newer and lose the first."""
    store = SiblingSet[str]().write("base", node="s", hlc=_ts(1), context=VersionVector())
    read = store.siblings.context
    one = store.siblings.write("alice", node="s", hlc=_ts(2), context=read)
    two = one.siblings.write("bob", node="s", hlc=_ts(3), context=read)
    assert two.siblings.values == ("alice", "bob")
    assert one.dvv.compare(two.dvv) is Ordering.CONCURRENT


def test_sibling_limit_keeps_the_newest_and_reports_the_dropped() -> None:
    store: SiblingSet[str] = SiblingSet()
    for t, value in enumerate(["a", "b", "c"], start=1):
        store = store.write(value, node="s", hlc=_ts(t), context=VersionVector()).siblings
    result = store.write("d", node="s", hlc=_ts(4), context=VersionVector(), limit=2)
    assert result.siblings.values == ("c", "d")
    assert [v.value for v in result.dropped] == ["a", "b"]
    assert result.superseded == ()
    # the drop sticks: a replica that still holds "a" and "b" loses them on merge
    assert result.siblings.merge(store).values == ("c", "d")
    assert store.merge(result.siblings).values == ("c", "d")


def test_the_new_write_is_kept_even_if_its_clock_is_behind() -> None:
    store: SiblingSet[str] = SiblingSet()
    store = store.write("newer", node="s", hlc=_ts(10), context=VersionVector()).siblings
    result = store.write("mine", node="s", hlc=_ts(1), context=VersionVector(), limit=1)
    assert result.siblings.values == ("mine",)
    assert [v.value for v in result.dropped] == ["newer"]


def test_merge_never_drops_so_a_merged_set_may_exceed_the_limit_until_trimmed() -> None:
    a = SiblingSet[str]().write("a", node="a", hlc=_ts(1, "a"), context=VersionVector(), limit=1)
    b = SiblingSet[str]().write("b", node="b", hlc=_ts(2, "b"), context=VersionVector(), limit=1)
    merged = a.siblings.merge(b.siblings)
    assert len(merged) == 2
    trimmed, dropped = merged.trim(1)
    assert trimmed.values == ("b",) and [v.value for v in dropped] == ["a"]
    assert trimmed.context == merged.context
    with pytest.raises(InvalidValueError, match="sibling limit"):
        merged.trim(0)


def test_add_receives_single_versions() -> None:
    v1 = Versioned("x", _ts(1, "a"), VersionVector({"a": 1}), "a")
    v2 = Versioned("y", _ts(2, "b"), VersionVector({"b": 1}), "b")
    v3 = Versioned("z", _ts(3, "a"), VersionVector({"a": 2, "b": 1}), "a")
    s = SiblingSet[str]().add(v1).add(v2)
    assert s.values == ("x", "y") and s.newest == v2
    s = s.add(v3)
    assert s.values == ("z",)
    assert s.add(v1) == s  # an old version arriving late changes nothing
    assert SiblingSet([v1, v2, v3]) == s
    assert SiblingSet.from_dict(s.to_dict()) == s
    assert Siblings is SiblingSet


def test_versioned_validates_and_round_trips() -> None:
    v = Versioned({"items": {"a": 1}}, _ts(1, "a"), VersionVector({"a": 1}), "a")
    assert Versioned.from_dict(v.to_dict()) == v
    assert v.dot.counter == 1
    with pytest.raises(InvalidValueError, match="must count its own event"):
        Versioned("x", _ts(1), VersionVector({"b": 1}), "a")
    with pytest.raises(InvalidValueError, match="HLCTimestamp"):
        Versioned("x", 5, VersionVector({"a": 1}), "a")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="not in the set's context"):
        SiblingSet.from_dict({"versions": [v.to_dict()], "context": {}})


@SETTINGS
@given(n=st.integers(2, 4), steps=STEPS, rnd=st.randoms(use_true_random=False))
def test_single_versions_delivered_in_origin_order_equal_the_merge_of_whole_sets(
    n: int, steps: list[tuple[int, int, int, int]], rnd: random.Random
) -> None:
    """What multi-master replication relies on: a node that receives every written version
    alone with ``add``, each origin's in the order it wrote them (origins interleaved at
    random), ends with exactly the join of all the writers' sets, gapped histories and all."""
    run = Run(n).play(steps, with_add=False)
    joined: SiblingSet[int] = SiblingSet()
    for state in run.snapshots:
        joined = joined.merge(state)
    queues = {f"n{i}": [v for v in run.written if v.origin == f"n{i}"] for i in range(n)}
    received: SiblingSet[int] = SiblingSet()
    while any(queues.values()):
        origin = rnd.choice([o for o, queue in queues.items() if queue])
        received = received.add(queues[origin].pop(0))
    assert received == joined


def test_a_write_that_did_not_see_its_own_sibling_stays_concurrent_with_it() -> None:
    """Two read-modify-writes on one node from the same read: the second's history has a
    gap where the first is, so neither supersedes the other anywhere."""
    base = SiblingSet[str]().write("base", node="a", hlc=_ts(1, "a"), context=VersionVector())
    read = base.siblings.context
    first = base.siblings.write("x1", node="a", hlc=_ts(2, "a"), context=read)
    second = first.siblings.write("x2", node="a", hlc=_ts(3, "a"), context=read)
    x1, x2 = first.version, second.version
    assert x1.past is None and x2.past == VersionVector({"a": 1})
    assert x2.vv == VersionVector({"a": 3})  # the covering vector over-states the history
    assert x2.covers(x2.dot) and not x2.covers(x1.dot) and x2.covers(base.version.dot)
    assert x1.compare(x2) is Ordering.CONCURRENT
    assert x2.descends(base.version) and not base.version.descends(x2)
    assert second.siblings.values == ("x1", "x2")
    assert SiblingSet([x1, x2]).values == ("x1", "x2")
    # elsewhere, received alone in the order they were written, both survive
    remote = SiblingSet[str]().add(base.version).add(x1).add(x2)
    assert remote == second.siblings
    assert KeepSiblings().resolve(remote, x2).values == ("x1", "x2")
    # the exact history travels with the version
    assert x2.to_dict()["past"] == {"a": 1}
    assert Versioned.from_dict(x2.to_dict()) == x2
    assert x2.dvv.context == VersionVector({"a": 1}) and x2.dvv.dot == x2.dot


def test_past_must_be_the_history_before_the_own_event() -> None:
    with pytest.raises(InvalidValueError, match="past"):
        Versioned("x", _ts(1, "a"), VersionVector({"a": 3}), "a", past=VersionVector({"a": 3}))
    with pytest.raises(InvalidValueError, match="past"):
        Versioned("x", _ts(1, "a"), VersionVector({"a": 3}), "a", past=VersionVector({"b": 1}))
    # a past without a gap is the plain vector's: it is dropped, so equal histories are equal
    plain = Versioned("x", _ts(1, "a"), VersionVector({"a": 2}), "a")
    same = Versioned("x", _ts(1, "a"), VersionVector({"a": 2}), "a", VersionVector({"a": 1}))
    assert same == plain and same.past is None


def test_a_delete_is_a_version_with_a_tombstone() -> None:
    store = SiblingSet[object]().write("v", node="a", hlc=_ts(1, "a"), context=VersionVector())
    context = store.siblings.context
    deleted = store.siblings.write(DELETED, node="a", hlc=_ts(2, "a"), context=context)
    assert deleted.siblings.values == (DELETED,) and deleted.version.deleted
    assert [v.value for v in deleted.superseded] == ["v"]
    data = deleted.version.to_dict()
    assert data["deleted"] is True and "value" not in data
    assert Versioned.from_dict(data).value is DELETED
    assert SiblingSet.from_dict(deleted.siblings.to_dict()) == deleted.siblings
    assert Tombstone() is DELETED and repr(DELETED) == "DELETED"
    with pytest.raises(InvalidValueError, match="value or deleted"):
        Versioned.from_dict({**data, "value": 1})
    with pytest.raises(InvalidValueError, match="value or deleted"):
        Versioned.from_dict({**data, "deleted": False})


@SETTINGS
@given(n=st.integers(2, 4), steps=STEPS, value=st.integers(0, 9), node=st.integers(0, 3))
def test_overwrite_is_a_write_based_on_everything_seen(
    n: int, steps: list[tuple[int, int, int, int]], value: int, node: int
) -> None:
    run = Run(n).play(steps, with_add=False)
    for state in run.snapshots[-3:]:
        name, hlc = f"n{node}", _ts(10_000, f"n{node}")
        written = state.write(value, node=name, hlc=hlc, context=state.context)
        assert state.overwrite(value, node=name, hlc=hlc) == (written.siblings, written.version)
