"""The graph conformance suite: every test runs against every graph backend.

Backends: Ladybug (a database file under tmp_path) and FalkorDB (a real throwaway
server; each test gets a graph of its own). Each test opens its own store inside
``asyncio.run`` so no connection pool crosses event loops.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from multistore.errors import (
    InvalidQueryError,
    InvalidValueError,
    NotFoundError,
    UsageError,
)
from multistore.stores import open_store
from multistore.stores.graph import KEY_PROPERTY, Direction, GraphStore

Body = Callable[[GraphStore], Awaitable[None]]

SEED_USERS = [("Alice", 30), ("Bob", 25), ("Carol", 28)]
SEED_FOLLOWS = [("Alice", "Bob"), ("Bob", "Carol"), ("Carol", "Alice")]


@pytest.fixture(params=["ladybug", pytest.param("falkordb", marks=pytest.mark.server)])
def graph_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "ladybug":
        return f"ladybug:///{tmp_path / 'graph.lbdb'}"
    return str(request.getfixturevalue("falkordb_url"))


async def _open(url: str) -> GraphStore:
    store = await open_store(url, model="graph")
    assert isinstance(store, GraphStore)
    return store


def run(url: str, body: Body) -> None:
    """Open the store at ``url``, run ``body(store)`` and close it, on one event loop."""

    async def main() -> None:
        store = await _open(url)
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


async def seed(s: GraphStore) -> None:
    """The seed's social network, through the portable helpers."""
    for name, age in SEED_USERS:
        await s.create_node("User", name, {"name": name, "age": age})
    for a, b in SEED_FOLLOWS:
        await s.create_relationship("User", a, "FOLLOWS", "User", b)


def names(nodes: list[dict[str, Any]] | None) -> list[str] | None:
    return None if nodes is None else [n[KEY_PROPERTY] for n in nodes]


async def snapshot(s: GraphStore) -> tuple[int, list[tuple[str, int]]]:
    """Every User with its age and the number of FOLLOWS: a cheap picture of the graph."""
    users = []
    for name, _ in SEED_USERS:
        node = await s.get_node("User", name)
        assert node is not None
        users.append((name, node["age"]))
    follows = sum([len(await s.neighbors("User", n, "FOLLOWS")) for n, _ in SEED_USERS])
    return await s.count_nodes(), [*users, ("follows", follows)]


# -- the seed's examples ---------------------------------------------------------------


def test_seed_friends_of_friends(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await seed(s)
        fof = await s.friends_of_friends("User", "Alice", "FOLLOWS")
        assert names(fof) == ["Carol"]
        assert fof[0]["name"] == "Carol" and fof[0]["age"] == 28
        assert fof[0]["_label"] == "User" and "_id" in fof[0]
        assert names(await s.friends_of_friends("User", "Bob", "FOLLOWS")) == ["Alice"]

    run(graph_url, body)


def test_seed_friends_of_friends_as_raw_cypher(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await seed(s)
        rows = await s.query(
            "MATCH (user:User {name: $name})-[:FOLLOWS]->()-[:FOLLOWS]->(fof) "
            "WHERE fof <> user RETURN DISTINCT fof.name AS name",
            {"name": "Alice"},
        )
        assert rows == [{"name": "Carol"}]

    run(graph_url, body)


def test_seed_shortest_paths(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await seed(s)
        # The seed's query: undirected, any length.
        path = await s.shortest_path("User", "Alice", "User", "Bob", "FOLLOWS")
        assert names(path) == ["Alice", "Bob"]
        assert path is not None and path[1]["age"] == 25
        # Directed: Alice -> Bob -> Carol, although Carol -> Alice is one hop back.
        out = await s.shortest_path("User", "Alice", "User", "Carol", "FOLLOWS", "out")
        assert names(out) == ["Alice", "Bob", "Carol"]
        back = await s.shortest_path("User", "Alice", "User", "Carol", "FOLLOWS", "in")
        assert names(back) == ["Alice", "Carol"]
        both = await s.shortest_path("User", "Alice", "User", "Carol", "FOLLOWS", "both")
        assert names(both) == ["Alice", "Carol"]
        # Any relationship type.
        assert names(await s.shortest_path("User", "Alice", "User", "Carol", None, "out")) == [
            "Alice",
            "Bob",
            "Carol",
        ]

    run(graph_url, body)


def test_shortest_path_limits_and_unreachable(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await seed(s)
        await s.create_node("User", "Dan", {"name": "Dan", "age": 40})
        assert await s.shortest_path("User", "Alice", "User", "Dan") is None
        assert await s.shortest_path("User", "Alice", "User", "Carol", "FOLLOWS", "out", 1) is None
        path = await s.shortest_path("User", "Alice", "User", "Carol", "FOLLOWS", "out", 2)
        assert names(path) == ["Alice", "Bob", "Carol"]
        assert names(await s.shortest_path("User", "Alice", "User", "Alice")) == ["Alice"]
        with pytest.raises(NotFoundError):
            await s.shortest_path("User", "Alice", "User", "Zed")
        with pytest.raises(NotFoundError):
            await s.shortest_path("User", "Zed", "User", "Alice")
        with pytest.raises(NotFoundError):
            await s.shortest_path("User", "Alice", "User", "Bob", "KNOWS")
        for hops in (0, -1, 101, 2.5, True):
            with pytest.raises(InvalidQueryError):
                await s.shortest_path("User", "Alice", "User", "Bob", max_hops=hops)  # type: ignore[arg-type]

    run(graph_url, body)


def test_seed_raw_query_with_params(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await seed(s)
        rows = await s.query(
            "MATCH (u:User) WHERE u.age > $age RETURN u.name AS name ORDER BY name", {"age": 26}
        )
        assert rows == [{"name": "Alice"}, {"name": "Carol"}]
        rows = await s.query(
            "MATCH (u:User) WHERE u.age > $age RETURN u.name AS name ORDER BY name", {"age": 29}
        )
        assert rows == [{"name": "Alice"}]

    run(graph_url, body)


def test_raw_query_converts_nodes_relationships_and_paths(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await seed(s)
        rows = await s.query(
            "MATCH (a:User {name: $a})-[r:FOLLOWS]->(b:User) RETURN a, r, b", {"a": "Alice"}
        )
        assert len(rows) == 1
        a, r, b = rows[0]["a"], rows[0]["r"], rows[0]["b"]
        assert {k: v for k, v in a.items() if k != "_id"} == {
            "key": "Alice",
            "name": "Alice",
            "age": 30,
            "_label": "User",
        }
        assert r["_type"] == "FOLLOWS"
        assert r["_src"] == a["_id"] and r["_dst"] == b["_id"]
        assert b["name"] == "Bob"
        node = await s.get_node("User", "Alice")
        assert node == a
        rows = await s.query(
            "MATCH p = (a:User {name: $a})-[:FOLLOWS]->(b:User)-[:FOLLOWS]->(c:User) RETURN p",
            {"a": "Alice"},
        )
        assert [n["name"] for n in rows[0]["p"]] == ["Alice", "Bob", "Carol"]
        assert await s.query("MATCH (u:User) WHERE u.age > $age RETURN u", {"age": 99}) == []

    run(graph_url, body)


# -- helpers ---------------------------------------------------------------------------


def test_create_node_is_an_upsert(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await s.create_node("User", "Alice", {"name": "Alice", "age": 30})
        await s.create_node("User", "Alice", {"age": 31, "city": "Oslo"})
        node = await s.get_node("User", "Alice")
        assert node is not None
        assert {k: v for k, v in node.items() if k != "_id"} == {
            "key": "Alice",
            "name": "Alice",
            "age": 31,
            "city": "Oslo",
            "_label": "User",
        }
        await s.create_node("User", "Alice", {"city": None})
        node = await s.get_node("User", "Alice")
        assert node is not None and "city" not in node and node["age"] == 31
        await s.create_node("User", "Alice", {KEY_PROPERTY: "Alice"})  # repeating the key is fine
        assert await s.count_nodes() == 1
        assert await s.count_nodes("User") == 1
        assert await s.get_node("User", "Bob") is None
        await s.create_node("User", "Bob")
        assert await s.get_node("User", "Bob") == {
            "key": "Bob",
            "_label": "User",
            "_id": (await s.get_node("User", "Bob") or {})["_id"],
        }
        await s.create_node("Product", "Alice", {"price": 9.5})  # same key, other label
        assert await s.count_nodes() == 3
        assert await s.count_nodes("User") == 2
        assert await s.count_nodes("Product") == 1

    run(graph_url, body)


def test_property_values_round_trip(graph_url: str) -> None:
    values: dict[str, Any] = {
        "flag": True,
        "off": False,
        "count": -(2**63),
        "big": 2**63 - 1,
        "ratio": 0.25,
        "text": "héllo 漢字 🙂",
        "empty": "",
        "tags": ["a", "b"],
        "scores": [1, 2, 3],
        "weights": [0.5, 1.5],
        "bits": [True, False],
    }

    async def body(s: GraphStore) -> None:
        await s.create_node("Thing", "t1", values)
        node = await s.get_node("Thing", "t1")
        assert node is not None
        assert {k: node[k] for k in values} == values
        assert all(type(node[k]) is type(v) for k, v in values.items())
        await s.create_node("Thing", "t2", {"tags": ("x",)})
        node = await s.get_node("Thing", "t2")
        assert node is not None and node["tags"] == ["x"]

    run(graph_url, body)


def test_neighbors_by_direction_and_type(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await seed(s)
        await s.create_node("Page", "news")
        await s.create_relationship("User", "Alice", "LIKES", "Page", "news", {"stars": 5})
        assert names(await s.neighbors("User", "Alice", "FOLLOWS")) == ["Bob"]
        assert names(await s.neighbors("User", "Alice", "FOLLOWS", "in")) == ["Carol"]
        assert names(await s.neighbors("User", "Alice", "FOLLOWS", "both")) == ["Bob", "Carol"]
        liked = await s.neighbors("User", "Alice", "LIKES")
        assert names(liked) == ["news"] and liked[0]["_label"] == "Page"
        assert names(await s.neighbors("User", "Alice")) == ["Bob", "news"]
        assert names(await s.neighbors("User", "Alice", direction="both")) == [
            "Bob",
            "Carol",
            "news",
        ]
        assert names(await s.neighbors("Page", "news", "LIKES", "in")) == ["Alice"]
        assert await s.neighbors("Page", "news", "LIKES") == []
        assert await s.neighbors("Page", "news", "FOLLOWS", "both") == []

    run(graph_url, body)


def test_friends_of_friends_keeps_direct_friends(graph_url: str) -> None:
    """As the seed's query: a friend who is also a friend of a friend is in the answer."""

    async def body(s: GraphStore) -> None:
        for name in ("a", "b", "c", "d"):
            await s.create_node("User", name)
        for x, y in [("a", "b"), ("b", "c"), ("a", "c"), ("c", "d"), ("b", "a")]:
            await s.create_relationship("User", x, "FOLLOWS", "User", y)
        # a->b->c, a->c->d, a->b->a (excluded: the start)
        assert names(await s.friends_of_friends("User", "a", "FOLLOWS")) == ["c", "d"]
        assert await s.friends_of_friends("User", "d", "FOLLOWS") == []

    run(graph_url, body)


def test_recommend_ranks_by_common_neighbours(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        for name in ("Alice", "Bob", "Carol", "Dan", "Grace", "Eve", "Frank"):
            await s.create_node("User", name)
        await s.create_node("Page", "Zoo")
        for a, b in [
            ("Alice", "Bob"),
            ("Alice", "Carol"),
            ("Bob", "Carol"),  # Carol: already Alice's neighbour, not recommended
            ("Bob", "Dan"),
            ("Carol", "Dan"),  # Dan: two common neighbours (Bob, Carol)
            ("Eve", "Carol"),  # Eve: one (Carol), linked *to* Carol: direction is ignored
            ("Grace", "Bob"),  # Grace: one (Bob)
            ("Dan", "Frank"),  # Frank: three hops away
        ]:
            await s.create_relationship("User", a, "FOLLOWS", "User", b)
        await s.create_relationship("User", "Bob", "LIKES", "Page", "Zoo")  # another type
        recs = await s.recommend("User", "Alice", "FOLLOWS")
        assert [(n[KEY_PROPERTY], score) for n, score in recs] == [
            ("Dan", 2),
            ("Eve", 1),
            ("Grace", 1),
        ]
        assert recs[0][0]["_label"] == "User"
        top = await s.recommend("User", "Alice", "FOLLOWS", k=2)
        assert [(n[KEY_PROPERTY], score) for n, score in top] == [("Dan", 2), ("Eve", 1)]
        assert await s.recommend("User", "Alice", "FOLLOWS", k=0) == []
        # Once Alice follows Dan, Dan is no longer a recommendation.
        await s.create_relationship("User", "Alice", "FOLLOWS", "User", "Dan")
        recs = await s.recommend("User", "Alice", "FOLLOWS")
        assert [(n[KEY_PROPERTY], score) for n, score in recs] == [
            ("Eve", 1),
            ("Frank", 1),
            ("Grace", 1),
        ]
        assert await s.recommend("User", "Frank", "LIKES") == []
        with pytest.raises(InvalidQueryError):
            await s.recommend("User", "Alice", "FOLLOWS", k=-1)

    run(graph_url, body)


def test_relationship_is_unique_per_pair_and_type(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await seed(s)
        await s.create_relationship("User", "Alice", "FOLLOWS", "User", "Bob", {"since": 2020})
        await s.create_relationship("User", "Alice", "FOLLOWS", "User", "Bob", {"since": 2021})
        rows = await s.query(
            "MATCH (a:User {name: $a})-[r:FOLLOWS]->(b:User {name: $b}) RETURN r",
            {"a": "Alice", "b": "Bob"},
        )
        assert len(rows) == 1 and rows[0]["r"]["since"] == 2021
        await s.create_relationship("User", "Alice", "FOLLOWS", "User", "Bob", {"since": None})
        rows = await s.query(
            "MATCH (a:User {name: $a})-[r:FOLLOWS]->(b:User {name: $b}) RETURN r",
            {"a": "Alice", "b": "Bob"},
        )
        assert "since" not in rows[0]["r"]
        # The reverse direction is another relationship.
        await s.create_relationship("User", "Bob", "FOLLOWS", "User", "Alice")
        assert names(await s.neighbors("User", "Alice", "FOLLOWS", "in")) == ["Bob", "Carol"]

    run(graph_url, body)


def test_delete_node_detaches_it(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await seed(s)
        assert await s.delete_node("User", "Bob") is True
        assert await s.delete_node("User", "Bob") is False
        assert await s.get_node("User", "Bob") is None
        assert await s.count_nodes("User") == 2
        assert await s.neighbors("User", "Alice", "FOLLOWS") == []
        assert names(await s.neighbors("User", "Alice", "FOLLOWS", "in")) == ["Carol"]
        assert await s.shortest_path("User", "Alice", "User", "Carol", "FOLLOWS", "out") is None

    run(graph_url, body)


def test_clear_forgets_everything(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await seed(s)
        await s.clear()
        assert await s.count_nodes() == 0
        with pytest.raises(NotFoundError):
            await s.count_nodes("User")
        await s.clear()  # clearing an empty graph is fine
        await s.create_node("Page", "p", {"title": "again"})
        assert await s.count_nodes() == 1
        rows = await s.query("MATCH (p:Page) RETURN p")
        assert rows[0]["p"]["_label"] == "Page" and rows[0]["p"]["title"] == "again"

    run(graph_url, body)


def test_data_survives_reopening(graph_url: str) -> None:
    async def write(s: GraphStore) -> None:
        await seed(s)

    async def read(s: GraphStore) -> None:
        assert await s.count_nodes("User") == 3
        assert names(await s.friends_of_friends("User", "Alice", "FOLLOWS")) == ["Carol"]
        await s.create_node("User", "Dan", {"age": 1})
        await s.create_relationship("User", "Dan", "FOLLOWS", "User", "Alice")
        assert names(await s.neighbors("User", "Alice", "FOLLOWS", "in")) == ["Carol", "Dan"]

    run(graph_url, write)
    run(graph_url, read)


# -- errors: exact type, and nothing changed -------------------------------------------


def test_syntax_error_is_invalid_query_and_changes_nothing(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await seed(s)
        before = await snapshot(s)
        for bad in (
            "MATCH (u:User WHERE u.age > 1 RETURN u",
            "CREATE (x:User {key: 'x'}) RETURN",
            "MATCH (u:User) DETACH DELET u",
        ):
            with pytest.raises(InvalidQueryError) as info:
                await s.query(bad)
            assert str(info.value)  # the backend's message is kept
        with pytest.raises(InvalidQueryError):
            await s.query("   ")
        assert await snapshot(s) == before

    run(graph_url, body)


def test_failing_write_query_is_rolled_back(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await seed(s)
        before = await snapshot(s)
        with pytest.raises(InvalidQueryError):
            # The SET happens first, then the division by zero fails the query.
            await s.query(
                "MATCH (u:User {name: $name}) SET u.age = 99 WITH u RETURN 1 / (u.age - 99) AS x",
                {"name": "Alice"},
            )
        assert await snapshot(s) == before
        node = await s.get_node("User", "Alice")
        assert node is not None and node["age"] == 30

    run(graph_url, body)


INJECTIONS = [
    "Alice'}) DETACH DELETE n //",
    'Alice"}) DETACH DELETE n //',
    "x` DETACH DELETE n //",
    "\\'; MATCH (n) DETACH DELETE n; //",
    "$name",
    "*/ MATCH (n) DETACH DELETE n /*",
    "a\\",
    "line\nbreak\ttab",
]


def test_injection_through_values_is_stored_as_data(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await seed(s)
        for i, text in enumerate(INJECTIONS):
            await s.create_node("User", text, {"name": text, "age": i})
            await s.create_relationship("User", "Alice", "FOLLOWS", "User", text, {"note": text})
        assert await s.count_nodes("User") == 3 + len(INJECTIONS)
        for i, text in enumerate(INJECTIONS):
            node = await s.get_node("User", text)
            assert node is not None and node["name"] == text and node["age"] == i
            rows = await s.query(
                "MATCH (u:User) WHERE u.name = $name RETURN u.name AS name, u.age AS age",
                {"name": text},
            )
            assert rows == [{"name": text, "age": i}]
        assert names(await s.neighbors("User", "Alice", "FOLLOWS")) == sorted(["Bob", *INJECTIONS])
        assert await s.delete_node("User", INJECTIONS[0]) is True
        assert await s.count_nodes("User") == 2 + len(INJECTIONS)
        assert names(await s.friends_of_friends("User", "Bob", "FOLLOWS")) == ["Alice"]

    run(graph_url, body)


def test_values_that_cannot_be_stored(graph_url: str) -> None:
    bad_values: list[Any] = [
        {"nested": 1},
        float("nan"),
        float("inf"),
        2**63,
        -(2**63) - 1,
        [[1, 2]],
        [1, "a"],
        [None],
        "nul\x00byte",
        b"bytes",
        object(),
        {1, 2},
    ]

    async def body(s: GraphStore) -> None:
        await seed(s)
        before = await snapshot(s)
        for value in bad_values:
            with pytest.raises(InvalidValueError):
                await s.create_node("User", "Alice", {"age": 1, "extra": value})
            with pytest.raises(InvalidValueError):
                await s.create_relationship(
                    "User", "Alice", "FOLLOWS", "User", "Bob", {"weight": value}
                )
        for props in ({"bad name": 1}, {"_hidden": 1}, {"": 1}, {1: 1}, {"key": "other"}):
            with pytest.raises(InvalidValueError):
                await s.create_node("User", "Alice", props)  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError):
            await s.create_relationship("User", "Alice", "FOLLOWS", "User", "Bob", {"key": "k"})
        for key in (1, None, "nul\x00"):
            with pytest.raises(InvalidValueError):
                await s.create_node("User", key, {})  # type: ignore[arg-type]
        for label in ("Bad Label", "", "1abc", "a`b", "_x", None):
            with pytest.raises(InvalidQueryError):
                await s.create_node(label, "k")  # type: ignore[arg-type]
            with pytest.raises(InvalidQueryError):
                await s.create_relationship("User", "Alice", label, "User", "Bob")  # type: ignore[arg-type]
        assert await snapshot(s) == before
        node = await s.get_node("User", "Alice")
        assert node is not None and "extra" not in node

    run(graph_url, body)


def test_bad_query_parameters(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await seed(s)
        before = await snapshot(s)
        with pytest.raises(InvalidQueryError):
            await s.query("RETURN $x AS x", {"bad name": 1})
        with pytest.raises(InvalidQueryError):
            await s.query("RETURN 1 AS x", [1])  # type: ignore[arg-type]
        assert await s.query("RETURN $x AS x", {"x": [1, 2]}) == [{"x": [1, 2]}]
        assert await s.query("RETURN $x AS x", {"x": 'it\'s "quoted"'}) == [{"x": 'it\'s "quoted"'}]
        assert await snapshot(s) == before

    run(graph_url, body)


def test_unknown_labels_types_and_nodes_are_not_found(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await seed(s)
        before = await snapshot(s)
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: s.get_node("Nope", "x"),
            lambda: s.count_nodes("Nope"),
            lambda: s.delete_node("Nope", "x"),
            lambda: s.neighbors("Nope", "x"),
            lambda: s.neighbors("User", "Zed"),
            lambda: s.neighbors("User", "Alice", "KNOWS"),
            lambda: s.friends_of_friends("User", "Zed", "FOLLOWS"),
            lambda: s.friends_of_friends("User", "Alice", "KNOWS"),
            lambda: s.recommend("User", "Zed", "FOLLOWS"),
            lambda: s.recommend("User", "Alice", "KNOWS"),
            lambda: s.recommend("User", "Zed", "FOLLOWS", k=0),
            lambda: s.shortest_path("Nope", "x", "User", "Alice"),
            lambda: s.create_relationship("User", "Alice", "FOLLOWS", "User", "Zed"),
            lambda: s.create_relationship("User", "Zed", "FOLLOWS", "User", "Alice"),
            lambda: s.create_relationship("User", "Alice", "FOLLOWS", "Nope", "Bob"),
        ]
        for call in calls:
            with pytest.raises(NotFoundError):
                await call()
        assert await snapshot(s) == before
        assert await s.get_node("User", "Zed") is None
        assert await s.delete_node("User", "Zed") is False

    run(graph_url, body)


def test_bad_arguments(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await seed(s)
        with pytest.raises(InvalidQueryError):
            await s.neighbors("User", "Alice", direction="sideways")  # type: ignore[arg-type]
        with pytest.raises(InvalidQueryError):
            await s.shortest_path("User", "Alice", "User", "Bob", direction="up")  # type: ignore[arg-type]
        with pytest.raises(InvalidQueryError):
            await s.recommend("User", "Alice", "FOLLOWS", k=1.5)  # type: ignore[arg-type]
        with pytest.raises(InvalidQueryError):
            await s.query(42)  # type: ignore[arg-type]

    run(graph_url, body)


def test_closed_store_refuses_work(graph_url: str) -> None:
    async def main() -> None:
        store = await _open(graph_url)
        await store.create_node("User", "Alice")
        await store.close()
        await store.close()  # twice is fine
        with pytest.raises(UsageError):
            await store.count_nodes()
        with pytest.raises(UsageError):
            await store.query("MATCH (n) RETURN count(n) AS n")

    asyncio.run(main())


def test_opened_by_url_scheme(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        assert s.model == "graph"
        assert s.backend == graph_url.split(":", 1)[0]
        assert s.native is not None

    run(graph_url, body)


# -- a stateful model test: random operations against the backend and a dict model -------

KEYS = st.sampled_from(["a", "b", "c", "d"])
DIRECTIONS = st.sampled_from(["out", "in", "both"])


class GraphModel(RuleBasedStateMachine):
    """Drives one backend and an in-memory model with the same operations (one label
    ``U``, one relationship type ``R``) and checks that they agree."""

    url: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.store = self.runner.run(_open(self.url))
        self.runner.run(self.store.clear())
        self.ages: dict[str, int | None] = {}
        self.edges: set[tuple[str, str]] = set()
        self.label_seen = False
        self.rel_seen = False

    def teardown(self) -> None:
        try:
            self.runner.run(self.store.close())
        finally:
            self.runner.close()

    def call(self, coro: Awaitable[Any], missing: bool) -> Any:
        """Run ``coro``; expect NotFoundError when ``missing``."""
        if missing:
            with pytest.raises(NotFoundError):
                self.runner.run(coro)  # type: ignore[arg-type]
            return None
        return self.runner.run(coro)  # type: ignore[arg-type]

    def around(self, key: str, direction: str) -> set[str]:
        out = {y for x, y in self.edges if x == key}
        into = {x for x, y in self.edges if y == key}
        return out if direction == "out" else into if direction == "in" else out | into

    @initialize(keys=st.sets(KEYS, min_size=2))
    def some_nodes(self, keys: set[str]) -> None:
        for key in sorted(keys):
            self.create_node(key, None)

    @rule(key=KEYS, age=st.none() | st.integers(0, 120))
    def create_node(self, key: str, age: int | None) -> None:
        self.runner.run(self.store.create_node("U", key, {"age": age}))
        self.label_seen = True
        self.ages[key] = age

    @rule(x=KEYS, y=KEYS)
    def create_relationship(self, x: str, y: str) -> None:
        missing = x not in self.ages or y not in self.ages
        self.call(self.store.create_relationship("U", x, "R", "U", y), missing)
        if not missing:
            self.edges.add((x, y))
            self.rel_seen = True

    @rule(data=st.data())
    def link_existing_nodes(self, data: st.DataObject) -> None:
        if self.ages:
            existing = st.sampled_from(sorted(self.ages))
            self.create_relationship(data.draw(existing), data.draw(existing))

    @rule(key=KEYS)
    def delete_node(self, key: str) -> None:
        deleted = self.call(self.store.delete_node("U", key), not self.label_seen)
        if self.label_seen:
            assert deleted is (key in self.ages)
            self.ages.pop(key, None)
            self.edges = {(x, y) for x, y in self.edges if key not in (x, y)}

    @rule(key=KEYS)
    def get_node(self, key: str) -> None:
        node = self.call(self.store.get_node("U", key), not self.label_seen)
        if self.label_seen:
            if key not in self.ages:
                assert node is None
            else:
                assert node is not None and node.get("age") == self.ages[key]

    @rule(key=KEYS, direction=DIRECTIONS)
    def neighbors(self, key: str, direction: Direction) -> None:
        missing = key not in self.ages or not self.rel_seen
        found = self.call(self.store.neighbors("U", key, "R", direction), missing)
        if not missing:
            assert names(found) == sorted(self.around(key, direction))

    @rule(key=KEYS)
    def friends_of_friends(self, key: str) -> None:
        missing = key not in self.ages or not self.rel_seen
        found = self.call(self.store.friends_of_friends("U", key, "R"), missing)
        if not missing:
            expected = {z for y in self.around(key, "out") for z in self.around(y, "out")}
            assert names(found) == sorted(expected - {key})

    @rule(key=KEYS, k=st.integers(1, 4))
    def recommend(self, key: str, k: int) -> None:
        missing = key not in self.ages or not self.rel_seen
        found = self.call(self.store.recommend("U", key, "R", k), missing)
        if not missing:
            mine = self.around(key, "both")
            scores = {
                c: len(mine & self.around(c, "both"))
                for c in self.ages
                if c != key and c not in mine
            }
            ranked = sorted((c for c in scores if scores[c]), key=lambda c: (-scores[c], c))
            assert [(n[KEY_PROPERTY], score) for n, score in found] == [
                (c, scores[c]) for c in ranked[:k]
            ]

    @rule(a=KEYS, b=KEYS, direction=DIRECTIONS)
    def shortest_path(self, a: str, b: str, direction: Direction) -> None:
        missing = a not in self.ages or b not in self.ages or (a != b and not self.rel_seen)
        path = self.call(self.store.shortest_path("U", a, "U", b, "R", direction), missing)
        if missing:
            return
        # Breadth-first search in the model for the length; any shortest path will do.
        dist, frontier = {a: 0}, [a]
        while frontier:
            step: list[str] = []
            for node in frontier:
                for nxt in sorted(self.around(node, direction) - dist.keys()):
                    dist[nxt] = dist[node] + 1
                    step.append(nxt)
            frontier = step
        if b not in dist:
            assert path is None
            return
        keys = names(path)
        assert keys is not None and len(keys) == dist[b] + 1
        assert keys[0] == a and keys[-1] == b
        for x, y in itertools.pairwise(keys):
            assert y in self.around(x, direction)

    @rule()
    def count_nodes(self) -> None:
        assert self.runner.run(self.store.count_nodes()) == len(self.ages)
        count = self.call(self.store.count_nodes("U"), not self.label_seen)
        if self.label_seen:
            assert count == len(self.ages)


def test_backend_agrees_with_a_model(graph_url: str) -> None:
    GraphModel.url = graph_url
    run_state_machine_as_test(
        GraphModel,
        settings=settings(
            max_examples=50,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_an_empty_node_key_is_refused(graph_url: str) -> None:
    """Ladybug stored a node with key "" (other stores refuse empty ids)."""

    async def body(s: GraphStore) -> None:
        await s.create_node("Person", "alice")
        with pytest.raises(InvalidValueError, match="empty"):
            await s.create_node("Person", "")
        with pytest.raises(InvalidValueError, match="empty"):
            await s.create_relationship("Person", "alice", "KNOWS", "Person", "")
        assert await s.count_nodes("Person") == 1

    run(graph_url, body)


@pytest.mark.parametrize(
    "key",
    [" alice", "alice ", "\tbob", "b" * 1025, "é" * 513, "lone \ud800"],
    ids=["leading-space", "trailing-space", "leading-tab", "1025-bytes", "1026-bytes", "surrogate"],
)
def test_keys_no_backend_can_find_again_are_refused(graph_url: str, key: str) -> None:
    """Found by the hostile suite: FalkorDB stored these keys but its index never found
    them again (edge whitespace, 4096 bytes and more), or failed with a driver error
    (a lone surrogate, which Ladybug stored as something else)."""

    async def body(s: GraphStore) -> None:
        await s.create_node("Person", "alice")
        with pytest.raises(InvalidValueError):
            await s.create_node("Person", key)
        assert await s.count_nodes("Person") == 1
        long_key = "k" * 1024
        await s.create_node("Person", long_key)
        assert await s.get_node("Person", long_key) is not None

    run(graph_url, body)


def test_raw_queries_refuse_what_no_backend_can_run(graph_url: str) -> None:
    async def body(s: GraphStore) -> None:
        await s.create_node("Person", "alice")
        with pytest.raises(InvalidQueryError):
            await s.query("MATCH (n) RETURN n.key AS \ud800")
        with pytest.raises(InvalidQueryError):
            await s.query("MATCH (n {key: $k}) RETURN n", {"other": 1})
        deep: dict[str, Any] = {}
        for _ in range(100):
            deep = {"a": deep}
        with pytest.raises(InvalidValueError, match="nested too deeply"):
            await s.query("RETURN $p AS p", {"p": deep})
        with pytest.raises(InvalidValueError, match="k"):
            await s.recommend("Person", "alice", "KNOWS", k=10**5000)

    run(graph_url, body)
