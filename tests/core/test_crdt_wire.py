"""The binary wire form of CRDT states: compact, backward compatible, and strict on bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multistore.core import Cart, GCounter, ORSet, crdt_from_bytes
from multistore.errors import InvalidValueError, MultistoreError


def _carts() -> tuple[Cart, Cart]:
    a = Cart("node-a")
    for i in range(40):
        a.add(f"sku-{i}", i % 5 + 1)
    b = a.rebind("node-b")
    a.add("sku-1", -1)
    a.remove("sku-2")
    b.add("sku-2", 3)
    b.add("épée ✓", 2)
    return a, b


def test_cart_round_trips_in_binary_and_is_smaller_than_its_json() -> None:
    a, b = _carts()
    merged = a.merge(b)
    wire = merged.to_bytes()
    assert wire[:2] == b"\x01c"
    assert len(wire) < len(merged.to_json().encode())
    back = Cart.from_bytes(wire, node="node-c")
    assert back == merged
    assert back.quantities() == merged.quantities()
    assert back.node == "node-c"
    # a replica restarted from the wire keeps going without reusing a dot
    restarted = Cart.from_bytes(a.to_bytes(), node="node-a")
    restarted.add("sku-9", 1)
    assert restarted.merge(b).quantities()["sku-9"] == a.merge(b).quantities()["sku-9"] + 1


def test_states_in_the_older_json_wire_form_still_decode() -> None:
    a, b = _carts()
    legacy = a.merge(b).to_json().encode()  # what the older encoding put on the wire
    assert Cart.from_bytes(legacy, node="x") == a.merge(b)
    assert crdt_from_bytes(legacy, node="x") == a.merge(b)
    counter = GCounter("a")
    counter.increment(3)
    assert GCounter.from_bytes(counter.to_json().encode(), node="b").value == 3


def test_crdts_without_a_binary_body_travel_as_tagged_json() -> None:
    s: ORSet[str] = ORSet("a")
    s.add("x")
    wire = s.to_bytes()
    assert wire[:2] == b"\x01J"
    assert crdt_from_bytes(wire, node="b") == s
    assert ORSet.from_bytes(wire, node="b").value == {"x"}


def test_carts_the_binary_body_cannot_hold_fall_back_to_json() -> None:
    cart = Cart("a")
    cart.add("nul\x00item", 2)
    cart.add("huge", 2**70)
    wire = cart.to_bytes()
    assert wire[:2] == b"\x01J"
    assert Cart.from_bytes(wire, node="b").quantities() == {"huge": 2**70, "nul\x00item": 2}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "cannot be empty"),
        ("text", "is bytes"),
        (b"\x07c", "unknown CRDT wire version 7"),
        (b"\x01", "no tag after the version byte"),
        (b"\x01z\x00", "unknown tag 122"),
        (b"\x01J{not json", "does not parse"),
        (b"{", "does not parse"),
        (b"\x01J" + b"[" * 100_000, "does not parse"),
    ],
)
def test_garbage_is_refused_with_a_clear_error(data: object, message: str) -> None:
    with pytest.raises(InvalidValueError, match=message):
        Cart.from_bytes(data, node="x")


def test_a_state_of_another_type_is_refused() -> None:
    counter = GCounter("a")
    counter.increment()
    with pytest.raises(InvalidValueError, match="expected a 'cart' state"):
        Cart.from_bytes(counter.to_bytes(), node="x")
    with pytest.raises(InvalidValueError, match="expected a 'gcounter' wire state, got a 'cart'"):
        GCounter.from_bytes(Cart("a").to_bytes(), node="x")


def test_every_truncation_of_a_cart_is_refused() -> None:
    a, b = _carts()
    wire = a.merge(b).to_bytes()
    for end in range(len(wire)):
        with pytest.raises(
            InvalidValueError, match=r"bad cart wire state|wire version|no tag|cannot be empty"
        ):
            Cart.from_bytes(wire[:end], node="x")
    with pytest.raises(InvalidValueError, match="1 bytes left over"):
        Cart.from_bytes(wire + b"\x00", node="x")


def test_a_huge_claimed_length_is_refused_without_allocating_it() -> None:
    # node count 1, then a text block that claims 4 GiB
    forged = b"\x01c" + (1).to_bytes(4, "little") + (2**32 - 1).to_bytes(4, "little") + b"a"
    with pytest.raises(InvalidValueError, match="truncated: node table needs 4294967295 bytes"):
        Cart.from_bytes(forged, node="x")
    # a valid empty cart, but an entry count of 2**32 - 1
    empty = Cart("a").to_bytes()
    forged = empty[:-16] + (2**32 - 1).to_bytes(4, "little") + empty[-12:]
    with pytest.raises(InvalidValueError, match="bad cart wire state"):
        Cart.from_bytes(forged, node="x")


def _cart_body(
    nodes: list[str], vv: list[tuple[int, int]], entries: list[tuple[str, int, int, int]]
) -> bytes:
    """A hand-made cart body: entries are (item, node index, counter, up)."""

    def column(values: list[int]) -> bytes:
        return b"\x01" + bytes(values)

    text = "\x00".join(nodes).encode()
    out = b"\x01c" + len(nodes).to_bytes(4, "little") + len(text).to_bytes(4, "little") + text
    out += len(vv).to_bytes(4, "little") + column([i for i, _ in vv]) + column([c for _, c in vv])
    out += (0).to_bytes(4, "little") + column([]) + column([])
    items = "\x00".join(e[0] for e in entries).encode()
    out += len(entries).to_bytes(4, "little") + len(items).to_bytes(4, "little") + items
    out += column([e[1] for e in entries]) + column([e[2] for e in entries])
    out += column([e[2] for e in entries]) + column([e[3] for e in entries])
    return out + column([0 for _ in entries])


def test_forged_cart_bodies_are_refused_not_misread() -> None:
    good = _cart_body(["a"], [(0, 2)], [("x", 0, 1, 3), ("y", 0, 2, 1)])
    assert Cart.from_bytes(good, node="n").quantities() == {"x": 3, "y": 1}
    cases = [
        (_cart_body(["a"], [(0, 1)], [("x", 0, 2, 3)]), "not in the state's context"),
        (_cart_body(["a"], [(0, 2)], [("x", 1, 1, 3)]), "past the node table"),
        (_cart_body(["a"], [(0, 2)], [("x", 0, 0, 3)]), "counters start at 1"),
        (_cart_body(["a"], [(0, 2)], [("x", 0, 1, 3), ("y", 0, 1, 1)]), "share a dot"),
        (_cart_body(["a", "a"], [(0, 2)], []), "repeats a node"),
        (_cart_body(["a b"], [(0, 2)], []), "no whitespace"),
        (_cart_body(["a"], [(0, 2), (0, 3)], []), "vector repeats a node"),
        (good[:10] + b"\xff" + good[11:], "not UTF-8"),
        (good[:15] + b"\x03" + good[16:], "column width 3"),
    ]
    for data, message in cases:
        with pytest.raises(InvalidValueError, match=message):
            Cart.from_bytes(data, node="n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_a_multistore_error(data: bytes) -> None:
    """Hostile input never escapes as a traceback of another kind, and what decodes is a
    state that survives its own round trip."""
    for decode in (Cart.from_bytes, crdt_from_bytes):
        for wire in (b"\x01c" + data, data):
            try:
                state = decode(wire, node="x")
            except MultistoreError as exc:
                assert str(exc)  # a refusal names the problem
                continue
            assert crdt_from_bytes(state.to_bytes(), node="x") == state


_VALID = _cart_body(["a", "b"], [(0, 3), (1, 1)], [("x", 0, 1, 3), ("y", 0, 3, 1), ("z", 1, 1, 2)])


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_VALID) - 1), st.integers(0, 255))
def test_a_cart_with_one_byte_changed_decodes_to_a_valid_state_or_is_refused(
    at: int, byte: int
) -> None:
    data = _VALID[:at] + bytes((byte,)) + _VALID[at + 1 :]
    try:
        cart = Cart.from_bytes(data, node="x")
    except MultistoreError:
        return
    # whatever decoded is a consistent state: it survives its own round trip and merges
    assert Cart.from_bytes(cart.to_bytes(), node="x") == cart
    other = Cart("q")
    other.add("x", 1)
    assert cart.merge(other) == other.merge(cart)
    before, after = cart.get("x"), cart.merge(other).get("x")
    assert after is not None and after.value == (before.value if before else 0) + 1
