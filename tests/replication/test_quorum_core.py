"""The pure parts of quorum replication: the hash ring, quorum arithmetic, Merkle trees."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import pytest

from multistore.core._merkle import MerkleTree, leaf_hash, leaf_of
from multistore.core._quorum import PRESETS, Consistency, QuorumConfig, required
from multistore.core._ring import RING_SIZE, HashRing, token_of
from multistore.errors import InvalidValueError

KEYS = [f"user:{i}" for i in range(20_000)]


def owners(ring: HashRing) -> dict[str, str]:
    return {key: ring.preference_list(key, 1)[0] for key in KEYS}


@pytest.mark.parametrize("m", [4, 8])
def test_adding_a_node_moves_about_one_in_m_keys(m: int) -> None:
    ring = HashRing([f"n{i}" for i in range(m - 1)], vnodes=128)
    before = owners(ring)
    after = owners(ring.add("new"))
    moved = [key for key in KEYS if before[key] != after[key]]
    # every moved key moved to the new node, and about 1/M of the keys moved
    assert all(after[key] == "new" for key in moved)
    assert 0.6 / m < len(moved) / len(KEYS) < 1.4 / m
    # the keys were taken from every old node, not from one neighbour
    assert {before[key] for key in moved} == set(ring.nodes)


def test_removing_a_node_moves_only_its_keys() -> None:
    ring = HashRing([f"n{i}" for i in range(5)], vnodes=128)
    before = owners(ring)
    after = owners(ring.remove("n2"))
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(before[key] == "n2" for key in moved)
    assert 0.6 / 5 < len(moved) / len(KEYS) < 1.4 / 5


def test_load_is_spread_by_virtual_nodes() -> None:
    ring = HashRing([f"n{i}" for i in range(5)], vnodes=128)
    counts: dict[str, int] = {}
    for owner in owners(ring).values():
        counts[owner] = counts.get(owner, 0) + 1
    assert max(counts.values()) < 1.35 * len(KEYS) / 5


def test_preference_lists_are_distinct_nodes_in_ring_order() -> None:
    ring = HashRing(["a", "b", "c", "d", "e"], vnodes=16)
    for key in KEYS[:500]:
        prefs = ring.preference_list(key, 3)
        assert len(set(prefs)) == 3
        assert list(ring.walk(key))[:3] == list(prefs)
        assert sorted(ring.walk(key)) == ["a", "b", "c", "d", "e"]
    assert ring.preference_list("k", 9) == tuple(ring.walk("k"))  # N > M: every node
    assert HashRing(["a", "b"]).preference_list("k", 2) == HashRing(["b", "a"]).preference_list(
        "k", 2
    )


def test_arcs_cover_the_ring_and_name_the_preference_list() -> None:
    ring = HashRing(["a", "b", "c", "d"], vnodes=8)
    arcs = ring.arcs(3)
    assert arcs[0].lo == 0 and arcs[-1].hi == RING_SIZE - 1
    for left, right in itertools.pairwise(arcs):
        assert left.hi + 1 == right.lo
    for key in KEYS[:300]:
        token = token_of(key)
        arc = next(a for a in arcs if a.lo <= token <= a.hi)
        assert arc.replicas == ring.preference_list(key, 3)
    shared = ring.shared_arcs("a", "b", 3)
    assert shared and all(
        "a" in arc.replicas and "b" in arc.replicas
        for arc in arcs
        if (arc.lo, arc.hi) in set(shared)
    )


def test_ring_rejects_bad_input() -> None:
    with pytest.raises(InvalidValueError):
        HashRing(["a", "a"])
    with pytest.raises(InvalidValueError):
        HashRing(["a"], vnodes=0)
    with pytest.raises(InvalidValueError):
        HashRing(["a"]).add("a")
    with pytest.raises(InvalidValueError):
        HashRing(["a"]).remove("b")
    with pytest.raises(InvalidValueError):
        HashRing(["a"]).preference_list("k", 0)


# -- quorum arithmetic ----------------------------------------------------------------


def test_levels() -> None:
    assert [required(level, 5) for level in Consistency] == [1, 3, 5]
    assert required(Consistency.QUORUM, 3) == 2 and required(Consistency.QUORUM, 4) == 3
    assert required("quorum", 3) == 2 and required("ALL", 3) == 3 and required("2", 3) == 2
    assert required(2, 3) == 2
    for bad in (0, 4, "most", True, 1.5):
        with pytest.raises(InvalidValueError):
            required(bad, 3)  # type: ignore[arg-type]


def test_presets_are_named_for_what_they_do() -> None:
    n = 5
    quorum = QuorumConfig.preset("quorum", n)
    assert (quorum.read_count, quorum.write_count) == (3, 3) and quorum.overlapping
    strong = QuorumConfig.preset("write_all_read_one", n)  # the seed's "strong"
    assert (strong.read_count, strong.write_count) == (1, 5) and strong.overlapping
    # the seed's "eventual" (W=1, R=N) still overlaps: R + W = N + 1 > N
    seed_eventual = QuorumConfig.preset("write_one_read_all", n)
    assert (seed_eventual.read_count, seed_eventual.write_count) == (5, 1)
    assert seed_eventual.overlapping and seed_eventual.warning() is None
    # the truly eventual one does not
    eventual = QuorumConfig.preset("eventual", n)
    assert (eventual.read_count, eventual.write_count) == (1, 1)
    assert not eventual.overlapping
    assert "stale" in (eventual.warning() or "")
    assert set(PRESETS) == {"quorum", "write_all_read_one", "write_one_read_all", "eventual"}
    with pytest.raises(InvalidValueError):
        QuorumConfig.preset("strong")


def test_config_checks() -> None:
    assert QuorumConfig(n=3, r=2, w=2).describe() == "N=3 R=2 W=2 (R+W>N)"
    assert not QuorumConfig(n=3, r=1, w=2).overlapping
    for kwargs in ({"n": 0}, {"n": 3, "r": 4}, {"n": 3, "pw": 4}, {"n": 3, "pr": -1}):
        with pytest.raises(InvalidValueError):
            QuorumConfig(**kwargs)


# -- Merkle trees -----------------------------------------------------------------------


def tree_of(keys: dict[str, str], depth: int) -> MerkleTree:
    leaves: dict[int, list[tuple[str, str]]] = {}
    for key in sorted(keys, key=lambda k: (token_of(k), k)):
        leaves.setdefault(leaf_of(token_of(key), depth), []).append((key, keys[key]))
    return MerkleTree(depth, {leaf: leaf_hash(items) for leaf, items in leaves.items()})


def test_merkle_diff_finds_exactly_the_differing_leaves() -> None:
    data = {f"k{i}": hashlib.sha1(str(i).encode()).hexdigest() for i in range(2000)}
    depth = 8
    same = tree_of(dict(data), depth)
    assert tree_of(data, depth).root == same.root and tree_of(data, depth).diff(same) == []
    changed = dict(data)
    changed["k5"] = "x"
    del changed["k77"]
    changed["extra"] = "y"
    expected = sorted({leaf_of(token_of(k), depth) for k in ("k5", "k77", "extra")})
    assert tree_of(data, depth).diff(tree_of(changed, depth)) == expected
    assert tree_of(changed, depth).diff(tree_of(data, depth)) == expected


def test_merkle_empty_and_bad_input() -> None:
    empty = MerkleTree(4, {})
    assert empty.root == "" and empty.diff(MerkleTree(4, {})) == []
    assert MerkleTree(4, {3: "abc"}).diff(empty) == [3]
    assert leaf_hash([]) == ""
    with pytest.raises(InvalidValueError):
        MerkleTree(4, {16: "x"})
    with pytest.raises(InvalidValueError):
        MerkleTree(4, {}).diff(MerkleTree(8, {}))


def test_the_write_path_encoding_is_the_sibling_set_wire_form() -> None:
    from multistore.core import HLCTimestamp, SiblingSet, Versioned, VersionVector
    from multistore.replication._quorum import decode_set, encode_set, encode_version

    alone: Versioned[Any] = Versioned(
        {"v": {"name": 'Zoë "q"', "n": [1, 2.5, None]}},
        HLCTimestamp(1_700_000_000_000, 3, "coordinator"),
        VersionVector({"coordinator": 5}),
        "coordinator",
    )
    with_context: Versioned[Any] = Versioned(
        {"v": "x"},
        HLCTimestamp(1_700_000_000_001, 0, "b"),
        VersionVector({"a": 2, "b": 9, "c": 1}),
        "b",
    )
    for version in (alone, with_context):
        blob = encode_version(version, str(version.hlc))
        as_set: SiblingSet[Any] = SiblingSet([version])
        assert blob == encode_set(as_set)  # byte for byte
        assert decode_set(blob) == as_set
    bad_values: list[object] = [{1, 2}, float("nan")]
    for bad in bad_values:
        broken: Versioned[Any] = Versioned({"v": bad}, alone.hlc, alone.vv, alone.origin)
        with pytest.raises(InvalidValueError, match="JSON-serialisable"):
            encode_version(broken, str(broken.hlc))


def test_quorums_are_strict_unless_asked_to_be_sloppy() -> None:
    assert QuorumConfig().sloppy is False
    assert QuorumConfig(sloppy=True).describe() == "N=3 R=2 W=2 (R+W>N, sloppy)"
    with pytest.raises(InvalidValueError, match="sloppy"):
        QuorumConfig(sloppy="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("change", ["add", "remove"])
def test_moves_name_every_key_whose_replicas_change(change: str) -> None:
    old = HashRing([f"n{i}" for i in range(5)], vnodes=32)
    new = old.add("n5") if change == "add" else old.remove("n2")
    moves = old.moves(new, 3)
    assert all(m.lo <= m.hi for m in moves)
    assert all(a.hi < b.lo for a, b in itertools.pairwise(moves))
    moved = 0
    for key in KEYS[:5000]:
        before, after = old.preference_list(key, 3), new.preference_list(key, 3)
        token = token_of(key)
        found = [m for m in moves if m.lo <= token <= m.hi]
        if before == after or set(before) == set(after):
            assert not found or set(found[0].sources) == set(before)
            continue
        moved += 1
        (move,) = found
        assert move.sources == before
        assert set(move.gained) == set(after) - set(before)
        assert set(move.lost) == set(before) - set(after)
    assert 0.3 < moved / 5000 < 0.8  # with N=3 a new node's ranges touch ~3/M of keys
