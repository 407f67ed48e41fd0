"""What each CRDT means: add-wins, observed-remove, multi-value, last-writer-wins, carts."""

from __future__ import annotations

import json

import pytest

from multistore.core import (
    Cart,
    GCounter,
    HLCTimestamp,
    LWWRegister,
    MVRegister,
    ORMap,
    ORSet,
    PNCounter,
)
from multistore.errors import InvalidValueError


def sync(*replicas: object) -> None:
    """Full-state exchange between every pair (what anti-entropy does)."""
    states = [r.copy() for r in replicas]  # type: ignore[attr-defined]
    for replica in replicas:
        for state in states:
            replica.apply(state)  # type: ignore[attr-defined]


def test_counters_sum_concurrent_increments() -> None:
    a, b = GCounter("a"), GCounter("b")
    a.increment(2)
    b.increment(3)
    b.apply(a.increment())
    sync(a, b)
    assert a.value == b.value == 6
    p, q = PNCounter("p"), PNCounter("q")
    p.increment(5)
    q.decrement(2)
    q.apply(p.add(-1))
    sync(p, q)
    assert p.value == q.value == 2
    with pytest.raises(InvalidValueError):
        a.increment(0)
    with pytest.raises(InvalidValueError):
        p.add(0)


def test_orset_add_wins_over_a_concurrent_remove() -> None:
    a, b = ORSet[str]("a"), ORSet[str]("b")
    b.apply(a.add("x"))
    remove = a.remove("x")  # a removes what it has seen
    add = b.add("x")  # b adds again concurrently
    a.apply(add)
    b.apply(remove)
    assert "x" in a and "x" in b
    assert a == b


def test_orset_remove_then_readd_and_no_tombstones() -> None:
    s = ORSet[str]("a")
    for _ in range(50):
        s.add("x")
        s.remove("x")
    assert "x" not in s
    s.add("x")
    assert s.value == {"x"}
    # fifty removes leave no trace but the context's one counter
    assert json.loads(s.to_json())["context"] == {"vv": [[0, 51]]}
    assert len(json.loads(s.to_json())["entries"]) == 1
    other = ORSet[str]("b")
    other.apply(s)
    other.remove("x")
    s.apply(other)
    assert "x" not in s


def test_orset_remove_only_affects_observed_adds() -> None:
    a, b = ORSet[str]("a"), ORSet[str]("b")
    a.add("x")
    b.add("x")  # b's add is unseen by a
    a.remove("x")
    sync(a, b)
    assert a.value == b.value == {"x"}
    b.remove("x")  # b has now seen both adds
    sync(a, b)
    assert a.value == b.value == frozenset()


def test_orset_out_of_order_deltas_use_the_dot_cloud_then_compact() -> None:
    a, b = ORSet[str]("a"), ORSet[str]("b")
    d1, d2, d3 = a.add("x"), a.add("y"), a.remove("x")
    b.apply(d2)
    assert b.value == {"y"}
    assert b.context.cloud  # a gap: a:1 was not seen yet
    b.apply(d3)  # the remove of x arrives before the add it removes
    assert not b.context.cloud
    b.apply(d1)  # ... so the late add of x stays removed
    assert b.value == {"y"} == a.value
    assert not b.context.cloud and b.context.vv.to_dict() == {"a": 2}
    assert a == b


def test_mvregister_keeps_concurrent_values_until_a_write_covers_them() -> None:
    a, b = MVRegister[str]("a"), MVRegister[str]("b")
    a.assign("red")
    b.assign("blue")
    sync(a, b)
    assert set(a.value) == {"red", "blue"} and a.value == b.value
    b.apply(a.assign("purple"))  # a saw both, so this write replaces both
    assert a.value == b.value == ("purple",)


def test_lww_register_greatest_timestamp_wins_and_ties_break_on_node() -> None:
    a, b = LWWRegister[str]("a"), LWWRegister[str]("b")
    a.assign("old", HLCTimestamp(1_000, 0, "a"))
    b.assign("new", HLCTimestamp(1_000, 1, "b"))
    sync(a, b)
    assert a.value == b.value == "new"
    c, d = LWWRegister[str]("c"), LWWRegister[str]("d")
    c.assign("from-a", HLCTimestamp(5, 0, "a"))
    d.assign("from-b", HLCTimestamp(5, 0, "b"))
    sync(c, d)
    assert c.value == d.value == "from-b"  # same time and counter: node id "b" > "a"


def test_ormap_update_concurrent_with_remove_survives_without_the_removed_part() -> None:
    a, b = ORMap[str, ORSet[str]]("a", ORSet), ORMap[str, ORSet[str]]("b", ORSet)
    b.apply(a.update("tags", lambda s: s.add("old")))
    remove = a.remove("tags")
    update = b.update("tags", lambda s: s.add("new"))
    a.apply(update)
    b.apply(remove)
    assert a == b
    got = a.get("tags")
    assert got is not None
    assert got.value == {"new"}  # the update survived; what a had removed did not come back
    assert a.value == {"tags": frozenset({"new"})}


def test_ormap_remove_after_seeing_the_update_removes_the_key() -> None:
    a, b = ORMap[str, PNCounter]("a", PNCounter), ORMap[str, PNCounter]("b", PNCounter)
    a.update("k", lambda c: c.increment(2))
    b.update("k", lambda c: c.increment(3))
    sync(a, b)
    assert a.value == {"k": 5}
    a.remove("k")
    sync(a, b)
    assert "k" not in a and "k" not in b
    assert a.get("k") is None


def test_ormap_values_must_be_crdts_and_keys_json_safe() -> None:
    with pytest.raises(InvalidValueError, match="CRDT class"):
        ORMap("a", dict)  # type: ignore[type-var]
    m = ORMap[object, GCounter]("a", GCounter)
    with pytest.raises(InvalidValueError, match="JSON-safe"):
        m.update(object(), lambda c: c.increment())
    assert len(m) == 0


def test_cart_concurrent_adds_add_up() -> None:
    a, b = Cart("a"), Cart("b")
    a.add("apple", 2)
    b.add("apple", 1)
    b.add("pear")
    sync(a, b)
    assert a.quantities() == b.quantities() == {"apple": 3, "pear": 1}
    a.add("apple", -3)
    sync(a, b)
    assert a.quantities() == {"pear": 1}  # a quantity of zero is not listed


def test_cart_remove_vs_concurrent_add_keeps_only_the_new_add() -> None:
    a, b = Cart("a"), Cart("b")
    b.apply(a.add("apple", 3))
    remove = a.remove("apple")
    add = b.add("apple", 1)
    a.apply(add)
    b.apply(remove)
    assert a.quantities() == b.quantities() == {"apple": 1}


def test_cart_documented_limit_the_adders_own_earlier_quantity_survives_a_concurrent_remove() -> (
    None
):
    """The updating replica's contribution since the last remove *it* saw survives."""
    a, b = Cart("a"), Cart("b")
    a.apply(b.add("apple", 3))  # b's own contribution: 3
    remove = a.remove("apple")
    add = b.add("apple", 1)  # b has not seen the remove: its contribution becomes 4
    a.apply(add)
    b.apply(remove)
    assert a.quantities() == b.quantities() == {"apple": 4}
    # once b has seen a remove, its next add starts from zero
    b.remove("apple")
    b.add("apple", 1)
    a.apply(b)
    assert a.quantities() == {"apple": 1}


def test_cart_state_is_json_and_decodes_to_an_equal_cart() -> None:
    cart = Cart("web-1")
    cart.add("apple", 2)
    cart.add("pear", 1)
    cart.remove("pear")
    data = json.loads(cart.to_json())
    assert data["type"] == "cart"
    assert Cart.from_dict(data, node="web-2").quantities() == {"apple": 2}
    with pytest.raises(InvalidValueError):
        cart.add("apple", 0)
    with pytest.raises(InvalidValueError):
        cart.add(3, 1)  # type: ignore[arg-type]


def test_copies_merges_and_deltas_do_not_share_mutable_state() -> None:
    a = Cart("a")
    a.add("apple", 2)
    b = a.copy()
    b.add("apple", 1)
    merged = a.merge(Cart("b"))
    merged.add("apple", 5)
    delta = a.add("pear")
    delta.add("pear", 3)
    got = a.get("apple")
    assert got is not None
    got.increment(10)
    assert a.quantities() == {"apple": 2, "pear": 1}
    assert b.quantities() == {"apple": 3}
