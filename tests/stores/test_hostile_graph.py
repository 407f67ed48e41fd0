"""Hostile input against every graph backend (see ``tests/stores/hostile.py``).

Labels, relationship types and property names (which end up inside the Cypher text),
node keys, property values, directions, hop counts, ``k`` and raw Cypher with
parameters; every operation is accepted (a node reads back with its properties, a
relationship is found) or refused with a ``MultistoreError`` and changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from multistore.stores import open_store
from multistore.stores.graph import GraphStore
from tests.stores.hostile import (
    Op,
    anything,
    drive,
    integers,
    mostly,
    plain_text,
    scalars,
    texts,
    values,
)

labels = mostly(st.sampled_from(["Person", "City", "Canary"]), texts)
rel_types = mostly(st.sampled_from(["KNOWS", "LIVES_IN"]), texts)
keys = mostly(
    st.sampled_from(["alice", "bob", "oslo", "c1"]) | plain_text, st.one_of(texts, anything)
)
prop_values = mostly(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        plain_text,
        st.lists(st.integers(-5, 5), max_size=3),
    ),
    st.one_of(scalars, values),
)
properties = mostly(
    st.dictionaries(
        mostly(st.sampled_from(["age", "name", "score"]), texts), prop_values, max_size=3
    ),
    anything,
)
CYPHER = [
    "MATCH (n) RETURN count(n) AS c",
    "MATCH (n {key: $k}) RETURN n",
    "RETURN $k AS v",
    "MATCH (n) WHERE n.key = $k RETURN n.key AS k",
]


@pytest.fixture(params=["ladybug", pytest.param("falkordb", marks=pytest.mark.server)])
def graph_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "ladybug":
        return f"ladybug:///{tmp_path / 'graph.lbdb'}"
    return str(request.getfixturevalue("falkordb_url"))


async def snapshot(store: GraphStore) -> Any:
    """Every node and relationship, in an order that does not depend on the engine's."""
    nodes = await store.query("MATCH (n) RETURN n")
    rels = await store.query("MATCH (a)-[r]->(b) RETURN a.key AS a, r, b.key AS b")
    return sorted(map(repr, nodes)), sorted(map(repr, rels))


def _node_has(label: Any, key: Any, props: Any) -> Any:
    async def verify(store: GraphStore, _: Any) -> None:
        node = await store.get_node(label, key)
        assert node is not None
        for name, value in (props or {}).items():
            assert node.get(name) == value, (name, node.get(name), value)

    return verify


@st.composite
def ops(draw: st.DrawFn) -> Op[GraphStore]:
    kind = draw(
        st.sampled_from(
            [
                *("create_node", "create_node", "get_node", "create_relationship", "neighbors"),
                *("friends_of_friends", "shortest_path", "recommend", "delete_node"),
                *("count_nodes", "query"),
            ]
        )
    )
    label, key = draw(labels), draw(keys)
    if kind == "create_node":
        props = draw(properties)
        return Op(
            kind,
            lambda s: s.create_node(label, key, props),
            _node_has(label, key, props),
            (label, key, props),
        )
    if kind == "get_node":
        return Op(kind, lambda s: s.get_node(label, key), None, (label, key))
    if kind == "create_relationship":
        rel, to_label, to_key, props = draw(rel_types), draw(labels), draw(keys), draw(properties)

        async def linked(store: GraphStore, _: Any) -> None:
            found = await store.neighbors(label, key, rel, "out")
            assert to_key in [n.get("key") for n in found]

        return Op(
            kind,
            lambda s: s.create_relationship(label, key, rel, to_label, to_key, props),
            linked,
            (label, key, rel, to_label, to_key, props),
        )
    if kind == "neighbors":
        rel = draw(st.one_of(st.none(), rel_types))
        direction = draw(mostly(st.sampled_from(["out", "in", "both"]), st.one_of(texts, anything)))
        return Op(
            kind,
            lambda s: s.neighbors(label, key, rel, direction),
            None,
            (label, key, rel, direction),
        )
    if kind == "friends_of_friends":
        rel = draw(rel_types)
        return Op(kind, lambda s: s.friends_of_friends(label, key, rel), None, (label, key, rel))
    if kind == "shortest_path":
        to_label, to_key = draw(labels), draw(keys)
        hops = draw(mostly(st.integers(1, 5), st.one_of(integers, anything)))
        return Op(
            kind,
            lambda s: s.shortest_path(label, key, to_label, to_key, max_hops=hops),
            None,
            (label, key, to_label, to_key, hops),
        )
    if kind == "recommend":
        rel, k = draw(rel_types), draw(mostly(st.integers(1, 5), st.one_of(integers, anything)))
        return Op(kind, lambda s: s.recommend(label, key, rel, k=k), None, (label, key, rel, k))
    if kind == "delete_node":
        return Op(kind, lambda s: s.delete_node(label, key), None, (label, key))
    if kind == "count_nodes":
        return Op(kind, lambda s: s.count_nodes(label), None, (label,))
    cypher = draw(mostly(st.sampled_from(CYPHER), texts))
    params = draw(mostly(st.fixed_dictionaries({"k": mostly(plain_text, scalars)}), anything))
    return Op(kind, lambda s: s.query(cypher, params), None, (cypher, params))


def test_hostile_graph(graph_url: str) -> None:
    async def factory() -> GraphStore:
        store = await open_store(graph_url, model="graph")
        assert isinstance(store, GraphStore)
        return store

    async def prepare(store: GraphStore) -> None:
        await store.create_node("Canary", "c1", {"name": "tweety", "age": 2})
        await store.create_node("Person", "alice", {"age": 30})
        await store.create_relationship("Person", "alice", "KNOWS", "Canary", "c1")

    stats = drive(factory, ops(), snapshot, prepare=prepare)
    assert stats.accepted and stats.refused
