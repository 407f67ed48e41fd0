"""Version vectors and dotted version vectors: the partial-order laws and the merge laws."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multistore.core import Dot, DottedVersionVector, Ordering, VersionVector
from multistore.errors import InvalidValueError

SETTINGS = settings(max_examples=100, deadline=None)
VVS = st.dictionaries(st.sampled_from("abcd"), st.integers(0, 4), max_size=4).map(VersionVector)


@SETTINGS
@given(VVS, VVS, VVS)
def test_merge_is_a_least_upper_bound(a: VersionVector, b: VersionVector, c: VersionVector) -> None:
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a
    m = a.merge(b)
    assert m.descends(a) and m.descends(b)
    # least: anything above both is above the merge
    if c.descends(a) and c.descends(b):
        assert c.descends(m)


@SETTINGS
@given(VVS, VVS, VVS)
def test_compare_is_a_partial_order(a: VersionVector, b: VersionVector, c: VersionVector) -> None:
    assert a.compare(a) is Ordering.EQUAL
    assert a.compare(b) is b.compare(a).reverse()
    assert (a.compare(b) is Ordering.EQUAL) == (a == b)
    assert (a.compare(b) is Ordering.AFTER) == a.dominates(b)
    assert a.descends(b) == (a.compare(b) in (Ordering.AFTER, Ordering.EQUAL))
    if a.descends(b) and b.descends(c):
        assert a.descends(c)
    if a.descends(b) and b.descends(a):
        assert a == b
    if a.compare(b) is Ordering.CONCURRENT:
        assert not a.descends(b) and not b.descends(a)
        assert a.merge(b).dominates(a) and a.merge(b).dominates(b)


@SETTINGS
@given(VVS, st.sampled_from("abcde"))
def test_increment_dominates_and_adds_one_event(a: VersionVector, node: str) -> None:
    b = a.increment(node)
    assert b.dominates(a) and not a.dominates(b)
    assert b.get_count(node) == a.get_count(node) + 1
    assert b.contains(Dot(node, b.get_count(node))) and not a.contains(b.dot(node))


def test_vectors_are_immutable_hashable_values_without_zero_entries() -> None:
    a = VersionVector({"a": 1, "b": 0})
    assert a == VersionVector({"a": 1}) and len(a) == 1 and "b" not in a
    assert hash(a) == hash(VersionVector({"a": 1}))
    assert a.increment("a") == VersionVector({"a": 2}) and a == VersionVector({"a": 1})
    assert VersionVector.from_dict(a.to_dict()) == a
    with pytest.raises(InvalidValueError, match="counter"):
        VersionVector({"a": -1})
    with pytest.raises(InvalidValueError, match="node id"):
        VersionVector({"": 1})
    with pytest.raises(InvalidValueError, match="no event"):
        a.dot("z")


def test_concurrent_example() -> None:
    a = VersionVector({"x": 2, "y": 1})
    b = VersionVector({"x": 1, "y": 2})
    assert a.compare(b) is Ordering.CONCURRENT
    assert a.compare(a.merge(b)) is Ordering.BEFORE
    assert a.merge(b).compare(a) is Ordering.AFTER


def test_dotted_version_vector_keeps_the_gap_a_plain_vector_loses() -> None:
    """Two clients read {a:1}; both write through server a. The writes get dots a:2 and a:3
    with context {a:1}: concurrent. As plain vectors ({a:2} vs {a:3}) the second would
    wrongly look newer."""
    first = DottedVersionVector(Dot("a", 2), VersionVector({"a": 1}))
    second = DottedVersionVector(Dot("a", 3), VersionVector({"a": 1}))
    assert first.compare(second) is Ordering.CONCURRENT
    assert first.to_vv().compare(second.to_vv()) is Ordering.BEFORE  # the plain-vector error
    after_both = DottedVersionVector(Dot("a", 4), VersionVector({"a": 3}))
    assert after_both.compare(first) is Ordering.AFTER
    assert after_both.compare(second) is Ordering.AFTER
    assert first.compare(first) is Ordering.EQUAL
    assert DottedVersionVector.from_dict(first.to_dict()) == first
    with pytest.raises(InvalidValueError, match="already contains"):
        DottedVersionVector(Dot("a", 1), VersionVector({"a": 1}))


def test_dots_are_ordered_values() -> None:
    assert Dot("a", 2) < Dot("a", 10) < Dot("b", 1)
    assert str(Dot("a", 2)) == "a:2"
    assert Dot.from_list(Dot("a", 2).to_list()) == Dot("a", 2)
    with pytest.raises(InvalidValueError):
        Dot("a", 0)
    with pytest.raises(InvalidValueError):
        Dot.from_list(["a"])
