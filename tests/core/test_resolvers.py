"""Conflict resolvers: LWW, merge functions (the seed's cart merge), siblings, CRDTs."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multistore.core import (
    DELETED,
    LWW,
    Cart,
    CRDTResolver,
    HLCTimestamp,
    KeepSiblings,
    MergeFunction,
    Resolver,
    SiblingSet,
    Versioned,
    VersionVector,
    merge_carts,
)
from multistore.errors import InvalidValueError, UsageError

SETTINGS = settings(max_examples=100, deadline=None)
CARTS = st.dictionaries(st.sampled_from("abcde"), st.integers(0, 9), max_size=5).map(
    lambda items: {"items": items}
)


def v(value: Any, t: int, vv: dict[str, int], origin: str) -> Versioned[Any]:
    return Versioned(value, HLCTimestamp(t, 0, origin), VersionVector(vv), origin)


# The seed's scenario: a cart {apple: 1} replicated on a and b; both change it concurrently.
BASE = v({"items": {"apple": 1}}, 1, {"a": 1}, "a")
ON_A = v({"items": {"apple": 2}}, 5, {"a": 2}, "a")  # a adds a second apple
ON_B = v({"items": {"apple": 1, "pear": 1}}, 6, {"a": 1, "b": 1}, "b")  # b adds a pear


def test_lww_loses_a_concurrent_cart_update_that_merge_carts_keeps() -> None:
    lww = LWW().resolve(ON_A, ON_B)
    assert lww.value == {"items": {"apple": 1, "pear": 1}}  # a's second apple is gone
    assert lww.losers == (ON_A,) and lww.concurrent
    merged = MergeFunction(merge_carts).resolve(ON_A, ON_B)
    assert merged.value == {"items": {"apple": 2, "pear": 1}}  # both changes kept
    assert merged.losers == () and merged.concurrent


def test_the_cart_crdt_keeps_both_changes_and_honours_removes() -> None:
    a, b = Cart("a"), Cart("b")
    b.apply(a.add("apple"))
    a.add("apple")
    b.add("pear")
    resolved = CRDTResolver().resolve(
        Versioned(a, HLCTimestamp(5, 0, "a"), VersionVector({"a": 2}), "a"),
        Versioned(b, HLCTimestamp(6, 0, "b"), VersionVector({"a": 1, "b": 1}), "b"),
    )
    assert resolved.value.quantities() == {"apple": 2, "pear": 1}
    assert resolved.concurrent and resolved.losers == ()
    assert resolved.winner is not None and resolved.winner.vv == VersionVector({"a": 2, "b": 1})


def test_lww_greatest_hlc_wins_with_node_id_tie_break() -> None:
    x = v("x", 7, {"a": 1}, "a")
    y = v("y", 7, {"b": 1}, "b")
    assert LWW().resolve(x, y).value == "y"
    assert LWW().resolve(y, x).value == "y"
    assert LWW().resolve(y, x).losers == (x,)


def test_lww_reports_only_concurrent_losers() -> None:
    old = v("old", 1, {"a": 1}, "a")
    new = v("new", 2, {"a": 2}, "a")
    result = LWW().resolve(old, new)
    assert result.value == "new" and result.losers == () and not result.concurrent
    assert LWW().resolve(new, old).value == "new"  # a late, older version changes nothing


def test_lww_over_siblings_collapses_them() -> None:
    siblings = SiblingSet([v("x", 1, {"a": 1}, "a"), v("y", 2, {"b": 1}, "b")])
    result = LWW().resolve(siblings, v("z", 3, {"c": 1}, "c"))
    assert result.value == "z" and [x.value for x in result.losers] == ["x", "y"]


@SETTINGS
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from("abc"), st.integers(1, 3)),
        min_size=2,
        max_size=6,
        unique_by=lambda t: (t[1], t[2]),
    ),
    st.randoms(use_true_random=False),
)
def test_lww_converges_in_any_order(stamps: list[tuple[int, str, int]], rnd: Any) -> None:
    versions = [v(f"{n}{c}", t, {n: c}, n) for t, n, c in stamps]
    expected = max(versions, key=lambda x: (x.hlc, x.dot))
    for _ in range(3):
        order = list(versions)
        rnd.shuffle(order)
        state = order[0]
        for remote in order[1:]:
            winner = LWW().resolve(state, remote).winner
            assert winner is not None
            state = winner
        assert state == expected


@SETTINGS
@given(CARTS, CARTS, CARTS)
def test_merge_carts_is_commutative_associative_idempotent(
    a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]
) -> None:
    assert merge_carts(a, b) == merge_carts(b, a)
    assert merge_carts(merge_carts(a, b), c) == merge_carts(a, merge_carts(b, c))
    assert merge_carts(a, a) == {"items": dict(sorted(a["items"].items()))}


@SETTINGS
@given(st.lists(CARTS, min_size=2, max_size=5), st.randoms(use_true_random=False))
def test_merge_function_converges_on_concurrent_versions_in_any_order(
    carts: list[dict[str, Any]], rnd: Any
) -> None:
    versions = [v(cart, i, {f"n{i}": 1}, f"n{i}") for i, cart in enumerate(carts)]
    results = []
    for _ in range(3):
        order = list(versions)
        rnd.shuffle(order)
        state = order[0]
        for remote in order[1:]:
            winner = MergeFunction(merge_carts).resolve(state, remote).winner
            assert winner is not None
            state = winner
        results.append(state)
    assert results[0] == results[1] == results[2]
    expected = carts[0]
    for cart in carts[1:]:
        expected = merge_carts(expected, cart)
    assert results[0].value == expected
    assert all(results[0].vv.descends(x.vv) for x in versions)


def test_merge_function_is_not_called_when_one_version_is_causally_newer() -> None:
    calls: list[object] = []

    def fn(a: Any, b: Any) -> Any:
        calls.append((a, b))
        return a

    merge = MergeFunction(fn)
    assert merge.resolve(BASE, ON_A).winner == ON_A
    assert merge.resolve(ON_A, BASE).winner == ON_A
    assert merge.resolve(ON_A, ON_A).winner == ON_A
    assert calls == []
    merge.resolve(ON_A, ON_B)
    assert len(calls) == 1


def test_merged_version_supersedes_both_inputs_so_a_later_write_wins() -> None:
    merged = MergeFunction(merge_carts).resolve(ON_A, ON_B).winner
    assert merged is not None
    assert merged.vv.dominates(ON_A.vv) and merged.vv.dominates(ON_B.vv)
    later = v({"items": {}}, 9, merged.vv.increment("b").to_dict(), "b")
    assert MergeFunction(merge_carts).resolve(merged, later).winner == later


def test_keep_siblings_keeps_concurrent_versions_and_drops_superseded_ones() -> None:
    keep = KeepSiblings()
    result = keep.resolve(ON_A, ON_B)
    assert result.winner is None and result.concurrent
    assert result.values == (ON_A.value, ON_B.value)
    with pytest.raises(UsageError, match="2 concurrent siblings"):
        _ = result.value
    assert result.siblings is not None
    after = v(
        {"items": {"apple": 2, "pear": 1}}, 9, result.siblings.context.increment("a").to_dict(), "a"
    )
    resolved = keep.resolve(result.siblings, after)
    assert resolved.winner == after and resolved.losers == ()


def test_keep_siblings_limit_drops_the_oldest_and_reports_them() -> None:
    versions = [v(i, i, {f"n{i}": 1}, f"n{i}") for i in range(1, 5)]
    keep = KeepSiblings(limit=2)
    state: Versioned[int] | SiblingSet[int] = versions[0]
    losers: list[Versioned[int]] = []
    for remote in versions[1:]:
        result = keep.resolve(state, remote)
        state = result.state
        losers += result.losers
    assert isinstance(state, SiblingSet) and state.values == (3, 4)
    assert [x.value for x in losers] == [1, 2]
    # a dropped version arriving again stays dropped
    again = keep.resolve(state, versions[0])
    assert again.values == (3, 4) and again.losers == ()
    with pytest.raises(InvalidValueError, match="sibling limit"):
        KeepSiblings(limit=0)


def test_every_strategy_is_a_resolver() -> None:
    for strategy in (LWW(), MergeFunction(merge_carts), KeepSiblings(3), CRDTResolver()):
        assert isinstance(strategy, Resolver)
        assert repr(strategy)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InvalidValueError, match="a cart is"):
        merge_carts({"items": {"a": 1}}, {"basket": {}})
    with pytest.raises(InvalidValueError, match="must be an int"):
        merge_carts({"items": {"a": 1.5}}, {"items": {}})
    with pytest.raises(InvalidValueError, match="callable"):
        MergeFunction(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="local must be"):
        LWW().resolve("nope", ON_A)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="CRDT values"):
        CRDTResolver().resolve(ON_A, ON_B)


def test_resolution_of_all_pairs_is_symmetric_for_lww_and_merge() -> None:
    versions = [BASE, ON_A, ON_B]
    for x, y in itertools.permutations(versions, 2):
        for strategy in (LWW(), MergeFunction(merge_carts)):
            assert strategy.resolve(x, y).winner == strategy.resolve(y, x).winner


def test_merge_functions_see_a_concurrent_delete() -> None:
    deleted = Versioned(DELETED, HLCTimestamp(7, 0, "c"), VersionVector({"a": 1, "c": 1}), "c")
    calls: list[tuple[Any, Any]] = []

    def record(a: Any, b: Any) -> Any:
        calls.append((a, b))
        return merge_carts(a, b)

    # the delete comes first in the fold, once; merge_carts counts it as an empty cart
    merged = MergeFunction(record).resolve(SiblingSet([ON_A, ON_B]), deleted)
    assert calls[0][0] is DELETED
    assert merged.value == {"items": {"apple": 2, "pear": 1}}
    assert merge_carts(DELETED, ON_A.value) == ON_A.value
    # only deletes: the function is not called and the key stays deleted
    other = Versioned(DELETED, HLCTimestamp(8, 0, "d"), VersionVector({"a": 1, "d": 1}), "d")
    calls.clear()
    assert MergeFunction(record).resolve(deleted, other).value is DELETED
    assert calls == []
    # LWW treats a delete like any version: the newest wins
    assert LWW().resolve(ON_B, deleted).value is DELETED
