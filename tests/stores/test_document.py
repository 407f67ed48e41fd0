"""The document conformance suite: every test runs against every document backend.

Backends: SQLite (a file under tmp_path) and PostgreSQL (a fresh database on the real
throwaway server), each through the async API and, where it has a sync backend, the
sync API (:mod:`tests.stores.apis`). Each test opens its own store inside one event loop, so no pool
crosses event loops. The pure filter evaluator (``_filters.matches``) is the reference:
the operator table checks it too, and the state machine holds each backend to it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from multistore.errors import (
    DuplicateKeyError,
    InvalidQueryError,
    InvalidValueError,
    NotFoundError,
    UsageError,
)
from multistore.stores.document import DocumentStore, IndexInfo
from multistore.stores.document._filters import (
    matches,
    parse_filter,
    parse_sort,
    sort_documents,
)
from multistore.stores.document._updates import apply_update, parse_update
from multistore.stores.document._values import kind
from tests.stores.apis import open_with

Body = Callable[[DocumentStore], Awaitable[None]]


_api = "async"  # the API that _open uses, set by the fixture below


@pytest.fixture(
    params=[
        ("sqlite", "async"),
        ("sqlite", "sync"),
        pytest.param(("postgresql", "async"), marks=pytest.mark.server),
    ],
    ids=lambda p: "-".join(p),
)
def doc_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    global _api
    backend, _api = request.param
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'docs.db'}"
    else:
        yield str(request.getfixturevalue("postgres_url"))
    _api = "async"


async def _open(url: str) -> DocumentStore:
    store: DocumentStore = await open_with(_api)(url, model="document")
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


def canon(value: Any) -> str:
    """Strict comparison form: tells 1 from 1.0 and True, ignores key order."""
    return json.dumps(value, sort_keys=True)


def ids(docs: list[dict[str, Any]]) -> list[str]:
    return [d["_id"] for d in docs]


# -- the seed's product catalog --------------------------------------------------------

LAPTOP: dict[str, Any] = {
    "_id": "prod_123",
    "name": "Laptop",
    "category": "electronics",
    "price": 999.99,
    "specs": {"cpu": "Intel i7", "ram": "16GB", "storage": "512GB SSD"},
    "reviews": [{"user": "alice", "rating": 5, "comment": "Great!"}],
}
TSHIRT: dict[str, Any] = {
    "_id": "prod_456",
    "name": "T-Shirt",
    "category": "clothing",
    "price": 19.99,
    "sizes": ["S", "M", "L", "XL"],
    "color": "blue",
}
MORE_PRODUCTS: list[dict[str, Any]] = [
    {
        "_id": "prod_789",
        "name": "Phone",
        "category": "electronics",
        "price": 599,
        "specs": {"cpu": "Snapdragon", "ram": "8GB"},
        "reviews": [
            {"user": "bob", "rating": 4, "comment": "Good"},
            {"user": "carol", "rating": 5, "comment": "Love it"},
        ],
        "colors": ["black", "white"],
    },
    {"_id": "prod_900", "name": "Monitor", "category": "electronics", "price": 1299.0},
    {
        "_id": "prod_901",
        "name": "Headphones",
        "category": "electronics",
        "price": 149.5,
        "wireless": True,
        "reviews": [],
    },
    {
        "_id": "prod_902",
        "name": "Distributed Systems",
        "category": "books",
        "price": 45,
        "authors": ["van Steen", "Tanenbaum"],
        "edition": {"number": 3, "year": 2017},
    },
    {"_id": "prod_903", "name": "Gift card", "category": "electronics", "price": "varies"},
]
PRODUCTS = [LAPTOP, TSHIRT, *MORE_PRODUCTS]


def test_seed_product_catalog(doc_url: str) -> None:
    async def body(s: DocumentStore) -> None:
        assert await s.insert("products", LAPTOP) == "prod_123"
        assert await s.insert("products", TSHIRT) == "prod_456"
        assert await s.insert_many("products", MORE_PRODUCTS) == ids(MORE_PRODUCTS)

        # db.products.find({"category": "electronics", "price": {$lt: 1000}}).sort({price: -1})
        found = await s.find(
            "products", {"category": "electronics", "price": {"$lt": 1000}}, sort=[("price", -1)]
        )
        assert found == [LAPTOP, MORE_PRODUCTS[0], MORE_PRODUCTS[2]]
        assert canon(found[0]) == canon(LAPTOP)  # 999.99 stays a float, 5 an int

        assert await s.get("products", "prod_456") == TSHIRT
        assert ids(await s.find("products", {"sizes": "M"})) == ["prod_456"]
        assert ids(await s.find("products", {"reviews.rating": 5})) == ["prod_123", "prod_789"]
        assert ids(await s.find("products", {"specs.cpu": "Intel i7"})) == ["prod_123"]
        assert ids(await s.find("products", {"edition.year": {"$gte": 2000}})) == ["prod_902"]
        assert await s.count("products", {"category": "electronics"}) == 5
        # "varies" is a string: it never compares with numbers, in either direction
        assert "prod_903" not in ids(await s.find("products", {"price": {"$gt": 0}}))
        assert "prod_903" not in ids(await s.find("products", {"price": {"$lt": 10**9}}))

    run(doc_url, body)


# -- user profiles of different types --------------------------------------------------

PROFILES: list[dict[str, Any]] = [
    {
        "_id": "u1",
        "type": "customer",
        "name": "Alice",
        "email": "alice@example.com",
        "address": {"city": "Lyon", "zip": "69001"},
        "orders": 12,
        "tags": ["vip", "newsletter"],
    },
    {
        "_id": "u2",
        "type": "seller",
        "name": "Bob's Shop",
        "store": {"rating": 4.6, "verified": True},
        "payout": {"iban": "FR76…", "schedule": "weekly"},
    },
    {"_id": "u3", "type": "admin", "name": "Carol", "permissions": ["refunds", "users"]},
    {
        "_id": "u4",
        "type": "customer",
        "name": "Dan",
        "address": {"city": "Paris"},
        "orders": 0,
        "tags": [],
        "referrer": None,
    },
]


def test_user_profiles_of_different_types(doc_url: str) -> None:
    async def body(s: DocumentStore) -> None:
        await s.insert_many("profiles", PROFILES)
        assert ids(await s.find("profiles", {"type": "customer"})) == ["u1", "u4"]
        assert ids(await s.find("profiles", {"address.city": "Paris"})) == ["u4"]
        assert ids(await s.find("profiles", {"store.verified": True})) == ["u2"]
        assert ids(await s.find("profiles", {"permissions": "refunds"})) == ["u3"]
        assert ids(await s.find("profiles", {"payout": {"$exists": True}})) == ["u2"]
        assert ids(await s.find("profiles", {"referrer": None})) == ["u1", "u2", "u3", "u4"]
        assert ids(await s.find("profiles", {"referrer": {"$exists": True}})) == ["u4"]
        assert ids(await s.find("profiles", {"orders": {"$gte": 1}})) == ["u1"]
        found = await s.find(
            "profiles",
            {"$or": [{"type": "admin"}, {"tags": "vip"}]},
            sort=[("name", -1)],
            projection=["name", "type"],
        )
        assert found == [
            {"_id": "u3", "name": "Carol", "type": "admin"},
            {"_id": "u1", "name": "Alice", "type": "customer"},
        ]
        assert await s.update("profiles", "u4", {"$push": {"tags": "new"}, "$inc": {"orders": 1}})
        assert await s.find_one(
            "profiles", {"tags": "new"}, projection={"_id": 0, "orders": 1}
        ) == {"orders": 1}

    run(doc_url, body)


# -- every operator ---------------------------------------------------------------------

OPERATOR_DOCS: list[dict[str, Any]] = [
    {"_id": "n1", "v": 1},
    {"_id": "n2", "v": 2.5},
    {"_id": "n3", "v": 1.0},
    {"_id": "s1", "v": "1"},
    {"_id": "s2", "v": "abc"},
    {"_id": "s3", "v": "B"},
    {"_id": "t", "v": True},
    {"_id": "f", "v": False},
    {"_id": "z", "v": None},
    {"_id": "m"},
    {"_id": "a1", "v": [1, 5, "x"]},
    {"_id": "a2", "v": [[1, 2], 3]},
    {"_id": "o1", "v": {"w": 1, "k": "q"}},
    {"_id": "r1", "r": [{"s": 5, "t": "a"}, {"s": 1}]},
    {"_id": "r2", "r": {"s": 5}},
    {"_id": "r3", "r": [{"s": [7, 8]}, {"u": {"s": 5}}]},
    {"_id": "r4", "r": [[{"s": 5}]]},
]
ALL = [d["_id"] for d in OPERATOR_DOCS]
NO_V = ["m", "r1", "r2", "r3", "r4"]


def _but(*excluded: str) -> list[str]:
    return [i for i in ALL if i not in excluded]


OPERATOR_CASES: list[tuple[dict[str, Any], list[str]]] = [
    ({}, ALL),
    ({"v": 1}, ["n1", "n3", "a1"]),
    ({"v": 1.0}, ["n1", "n3", "a1"]),
    ({"v": {"$eq": 1}}, ["n1", "n3", "a1"]),
    ({"v": True}, ["t"]),
    ({"v": False}, ["f"]),
    ({"v": "1"}, ["s1"]),
    ({"v": None}, ["z", *NO_V]),
    ({"v": {"$ne": None}}, _but("z", *NO_V)),
    ({"v": {"$ne": 1}}, _but("n1", "n3", "a1")),
    ({"v": {"$exists": True}}, _but(*NO_V)),
    ({"v": {"$exists": False}}, NO_V),
    ({"v": {"$gt": 1}}, ["n2", "a1", "a2"]),
    ({"v": {"$gte": 1}}, ["n1", "n2", "n3", "a1", "a2"]),
    ({"v": {"$lt": 2}}, ["n1", "n3", "a1"]),
    ({"v": {"$lte": 1.0}}, ["n1", "n3", "a1"]),
    ({"v": {"$lte": "B"}}, ["s1", "s3"]),
    ({"v": {"$gt": "a"}}, ["s2", "a1"]),
    ({"v": {"$gt": 1, "$lt": 3}}, ["n2", "a1"]),
    ({"v": [1, 2]}, ["a2"]),
    ({"v": [1, 5, "x"]}, ["a1"]),
    ({"v": [5, 1, "x"]}, []),
    ({"v": {"k": "q", "w": 1}}, ["o1"]),
    ({"v": {"w": 1}}, []),
    ({"v.w": 1}, ["o1"]),
    ({"v": {"$in": [2.5, "abc", None]}}, ["n2", "s2", "z", *NO_V]),
    ({"v": {"$in": []}}, []),
    ({"v": {"$in": [[1, 2], {"k": "q", "w": 1.0}]}}, ["a2", "o1"]),
    ({"v": {"$nin": [1, True]}}, _but("n1", "n3", "a1", "t")),
    ({"v": {"$nin": []}}, ALL),
    ({"v": {"$not": {"$gt": 1}}}, _but("n2", "a1", "a2")),
    ({"r.s": 5}, ["r1", "r2"]),
    ({"r.s": 7}, ["r3"]),
    ({"r.s": [7, 8]}, ["r3"]),
    ({"r.s": {"$exists": True}}, ["r1", "r2", "r3"]),
    ({"r.t": "a"}, ["r1"]),
    ({"r.u.s": 5}, ["r3"]),
    ({"r.s": {"$gt": 4, "$lt": 6}}, ["r1", "r2"]),
    ({"r.s": {"$gte": 8}}, ["r3"]),
    ({"$or": [{"v": 2.5}, {"r.s": 7}]}, ["n2", "r3"]),
    ({"$and": [{"v": {"$gte": 1}}, {"v": {"$lt": 2}}]}, ["n1", "n3", "a1"]),
    ({"$nor": [{"v": {"$exists": True}}, {"r": {"$exists": True}}]}, ["m"]),
    ({"_id": "n1"}, ["n1"]),
    ({"_id": {"$in": ["n1", "s1", "nope"]}}, ["n1", "s1"]),
    ({"v": 1, "_id": {"$ne": "n3"}}, ["n1", "a1"]),
]


def test_every_operator(doc_url: str) -> None:
    async def body(s: DocumentStore) -> None:
        await s.insert_many("ops", OPERATOR_DOCS)
        wrong: list[str] = []
        for flt, expected in OPERATOR_CASES:
            reference = [d["_id"] for d in OPERATOR_DOCS if matches(parse_filter(flt), d)]
            assert reference == expected, f"evaluator disagrees on {flt}"
            got = ids(await s.find("ops", flt))
            counted = await s.count("ops", flt)
            if got != expected or counted != len(expected):
                wrong.append(f"{flt}: got {got} (count {counted}), expected {expected}")
        assert not wrong, "\n".join(wrong)

    run(doc_url, body)


def test_sort_on_several_keys_missing_first(doc_url: str) -> None:
    docs: list[dict[str, Any]] = [
        {"_id": "a", "k": 2, "s": "b"},
        {"_id": "b", "k": None, "s": "a"},
        {"_id": "c", "s": "c"},
        {"_id": "d", "k": "x"},
        {"_id": "e", "k": 1.5, "s": "a"},
        {"_id": "f", "k": True},
        {"_id": "g", "k": [1]},
        {"_id": "h", "k": {"z": 1}},
        {"_id": "i", "k": 2, "s": "a"},
        {"_id": "j", "k": "X"},
    ]

    async def body(s: DocumentStore) -> None:
        await s.insert_many("sorted", docs)
        cases = {
            (("k", 1),): ["b", "c", "e", "a", "i", "j", "d", "h", "g", "f"],
            (("k", -1),): ["f", "g", "h", "d", "j", "a", "i", "e", "b", "c"],
            (("k", -1), ("s", 1)): ["f", "g", "h", "d", "j", "i", "a", "e", "b", "c"],
            (("s", 1), ("k", -1)): ["f", "g", "h", "d", "j", "i", "e", "b", "a", "c"],
        }
        for sort, expected in cases.items():
            assert ids(sort_documents(docs, parse_sort(list(sort)))) == expected, sort
            assert ids(await s.find("sorted", sort=list(sort))) == expected, sort
        assert ids(await s.find("sorted")) == ids(docs)  # insertion order without a sort

    run(doc_url, body)


def test_skip_and_limit(doc_url: str) -> None:
    async def body(s: DocumentStore) -> None:
        await s.insert_many("nums", [{"_id": f"d{i}", "n": i} for i in range(10)])
        by_n = [("n", -1)]
        assert ids(await s.find("nums", sort=by_n, limit=3)) == ["d9", "d8", "d7"]
        assert ids(await s.find("nums", sort=by_n, skip=8)) == ["d1", "d0"]
        assert ids(await s.find("nums", {"n": {"$gte": 4}}, skip=1, limit=2)) == ["d5", "d6"]
        assert await s.find("nums", skip=10) == []
        assert await s.find("nums", limit=0) == []
        assert (await s.find_one("nums", sort=by_n)) == {"_id": "d9", "n": 9}
        assert await s.find_one("nums", {"n": 42}) is None
        for bad in ({"skip": -1}, {"limit": -1}, {"limit": True}, {"skip": 1.5}):
            with pytest.raises(InvalidQueryError):
                await s.find("nums", **bad)

    run(doc_url, body)


def test_projection(doc_url: str) -> None:
    async def body(s: DocumentStore) -> None:
        await s.insert_many("products", PRODUCTS)
        assert await s.find("products", {"_id": "prod_123"}, projection=["name", "specs.cpu"]) == [
            {"_id": "prod_123", "name": "Laptop", "specs": {"cpu": "Intel i7"}}
        ]
        assert await s.find_one(
            "products", {"_id": "prod_789"}, projection={"reviews.rating": 1, "_id": 0}
        ) == {"reviews": [{"rating": 4}, {"rating": 5}]}
        assert await s.find_one(
            "products", {"_id": "prod_123"}, projection={"specs": 0, "reviews.comment": 0}
        ) == {
            "_id": "prod_123",
            "name": "Laptop",
            "category": "electronics",
            "price": 999.99,
            "reviews": [{"user": "alice", "rating": 5}],
        }
        assert await s.find_one("products", {"_id": "prod_456"}, projection=["missing"]) == {
            "_id": "prod_456"
        }
        bad_projections: list[Any] = [{"name": 1, "price": 0}, {"name": 2}, "name", ["a..b"]]
        for bad in [*bad_projections, ["a", "a.b"]]:
            with pytest.raises(InvalidQueryError):
                await s.find("products", projection=bad)

    run(doc_url, body)


# -- documents ------------------------------------------------------------------------


def test_insert_get_replace_delete(doc_url: str) -> None:
    async def body(s: DocumentStore) -> None:
        new_id = await s.insert("things", {"name": "generated"})
        assert isinstance(new_id, str) and new_id
        assert await s.get("things", new_id) == {"_id": new_id, "name": "generated"}
        assert await s.get("things", "absent") is None

        assert await s.replace("things", new_id, {"name": "replaced", "n": [1, {"x": None}]})
        assert await s.get("things", new_id) == {
            "_id": new_id,
            "name": "replaced",
            "n": [1, {"x": None}],
        }
        assert await s.replace("things", new_id, {"_id": new_id, "name": "again"})
        assert not await s.replace("things", "absent", {"name": "x"})
        assert await s.get("things", "absent") is None

        assert await s.delete("things", new_id)
        assert not await s.delete("things", new_id)
        assert await s.get("things", new_id) is None
        assert await s.count("things") == 0

        # a new document goes last; a replaced one keeps its place
        await s.insert_many("things", [{"_id": "a"}, {"_id": "b"}, {"_id": "c"}])
        await s.replace("things", "a", {"v": 1})
        await s.delete("things", "b")
        await s.insert("things", {"_id": "b"})
        assert ids(await s.find("things")) == ["a", "c", "b"]

    run(doc_url, body)


def test_values_round_trip_with_their_types(doc_url: str) -> None:
    doc = {
        "_id": "types",
        "int": 7,
        "float": 7.0,
        "neg": -0.5,
        "big": 2**63 - 1,
        "small": -(2**63),
        "tiny": 1e-300,
        "huge": 1.5e300,
        "exp": 1e20,
        "bool": False,
        "null": None,
        "text": "héllo ✓ 𝄞",
        "empty": {"list": [], "obj": {}, "str": ""},
        "nested": [[1, [2, [3]]], {"a": {"b": {"c": [True]}}}],
    }

    async def body(s: DocumentStore) -> None:
        await s.insert("types", doc)
        assert canon(await s.get("types", "types")) == canon(doc)
        assert ids(await s.find("types", {"big": 2**63 - 1, "exp": 1e20})) == ["types"]

    run(doc_url, body)


def test_collections_are_created_implicitly_and_dropped(doc_url: str) -> None:
    async def body(s: DocumentStore) -> None:
        assert await s.collections() == []
        assert await s.create_collection("empty")
        assert not await s.create_collection("empty")
        await s.insert("users", {"_id": "x"})
        assert await s.collections() == ["empty", "users"]
        assert await s.count("empty") == 0
        assert await s.find("empty", {"a": 1}) == []

        await s.create_index("users", "email")
        assert await s.drop_collection("users")
        assert not await s.drop_collection("users")
        assert await s.collections() == ["empty"]
        await s.insert("users", {"_id": "x"})  # the id is free again
        assert await s.indexes("users") == []

    run(doc_url, body)


def test_missing_collection_is_not_found(doc_url: str) -> None:
    async def body(s: DocumentStore) -> None:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: s.find("ghosts", {"a": 1}),
            lambda: s.find_one("ghosts"),
            lambda: s.count("ghosts"),
            lambda: s.get("ghosts", "x"),
            lambda: s.update("ghosts", "x", {"$set": {"a": 1}}),
            lambda: s.replace("ghosts", "x", {"a": 1}),
            lambda: s.delete("ghosts", "x"),
            lambda: s.indexes("ghosts"),
        ]
        for call in calls:
            with pytest.raises(NotFoundError, match="ghosts"):
                await call()
        assert await s.collections() == []

    run(doc_url, body)


def test_a_closed_store_refuses_work(doc_url: str) -> None:
    async def body() -> None:
        store = await _open(doc_url)
        await store.insert("things", {"_id": "a"})
        await store.close()
        await store.close()  # twice is fine
        with pytest.raises(UsageError, match="closed"):
            await store.get("things", "a")
        with pytest.raises(UsageError, match="closed"):
            await store.insert("things", {"_id": "b"})

    asyncio.run(body())


# -- updates --------------------------------------------------------------------------


def test_update_operators(doc_url: str) -> None:
    async def body(s: DocumentStore) -> None:
        await s.insert("p", {"_id": "p1", "name": "Laptop", "stock": 3, "price": 10.5})
        assert await s.update(
            "p",
            "p1",
            {
                "$set": {"specs.cpu": "i7", "name": "Laptop Pro"},
                "$inc": {"stock": -1, "price": 0.25, "views": 2},
                "$push": {"tags": "new"},
            },
        )
        assert await s.get("p", "p1") == {
            "_id": "p1",
            "name": "Laptop Pro",
            "stock": 2,
            "price": 10.75,
            "specs": {"cpu": "i7"},
            "views": 2,
            "tags": ["new"],
        }
        assert await s.update("p", "p1", {"$push": {"tags": {"$each": ["a", {"b": 1}]}}})
        assert await s.update("p", "p1", {"$unset": {"specs.cpu": "", "nothing.here": ""}})
        assert await s.update("p", "p1", {"$set": {"specs.ram": "16GB", "empty": {}}})
        doc = await s.get("p", "p1")
        assert doc is not None
        assert doc["tags"] == ["new", "a", {"b": 1}]
        assert doc["specs"] == {"ram": "16GB"} and doc["empty"] == {}
        assert not await s.update("p", "absent", {"$set": {"a": 1}})
        assert await s.count("p") == 1

    run(doc_url, body)


def test_concurrent_increments_are_atomic(doc_url: str) -> None:
    async def body(s: DocumentStore) -> None:
        await s.insert("counters", {"_id": "c", "n": 0, "log": []})

        async def bump(i: int) -> None:
            assert await s.update("counters", "c", {"$inc": {"n": 1}, "$push": {"log": i}})

        await asyncio.gather(*(bump(i) for i in range(30)))
        doc = await s.get("counters", "c")
        assert doc is not None
        assert doc["n"] == 30 and sorted(doc["log"]) == list(range(30))

    run(doc_url, body)


# -- bad input: exact error, data unchanged ------------------------------------------


def test_bad_filters_raise_invalid_query(doc_url: str) -> None:
    async def body(s: DocumentStore) -> None:
        await s.insert_many("products", PRODUCTS)
        before = await s.find("products")
        cases: list[tuple[Any, str]] = [
            ({"price": {"$regex": "^1"}}, r"\$regex"),
            ({"$where": "this.price < 10"}, r"\$where"),
            ({"price": {"$in": 5}}, r"\$in"),
            ({"price": {"$nin": "abc"}}, r"\$nin"),
            ({"$and": {"price": 1}}, r"\$and"),
            ({"$or": []}, r"\$or"),
            ({"price": {"$lt": None}}, r"\$lt"),
            ({"price": {"$gt": [1]}}, r"\$gt"),
            ({"price": {"$exists": "yes"}}, r"\$exists"),
            ({"price": {"$not": 5}}, r"\$not"),
            ({"price": {"$lt": 5, "currency": "EUR"}}, "mixes"),
            ({"a..b": 1}, "empty segment"),
            ({"reviews.0.rating": 5}, "array positions"),
            ({"a b": 1}, "segment"),
            ({"price": float("nan")}, "NaN"),
            ({"price": {"$in": [float("inf")]}}, "Infinity"),
            ({1: 2}, "not a string"),
            (["price", 1], "must be a dict"),
        ]
        for flt, message in cases:
            with pytest.raises(InvalidQueryError, match=message):
                await s.find("products", flt)
            with pytest.raises(InvalidQueryError, match=message):
                await s.count("products", flt)
        with pytest.raises(InvalidQueryError, match="direction"):
            await s.find("products", sort=[("price", 0)])
        with pytest.raises(InvalidQueryError):
            await s.find("products", sort="price")  # type: ignore[arg-type]
        assert await s.find("products") == before

    run(doc_url, body)


def test_bad_documents_store_nothing(doc_url: str) -> None:
    async def body(s: DocumentStore) -> None:
        await s.insert("products", LAPTOP)
        bad_docs: list[Any] = [
            {"_id": "nan", "price": float("nan")},
            {"_id": "inf", "price": float("inf")},
            {"_id": "deep", "specs": {"list": [1, float("-inf")]}},
            {"_id": "big", "n": 2**63},
            {"_id": "nul", "name": "a\x00b"},
            {"_id": "op", "price": {"$gt": 0}},
            {"_id": "key", "a": {1: "x"}},
            {"_id": "set", "tags": {"a", "b"}},
            {"_id": 123},
            {"_id": ""},
            {"_id": None},
            ["not", "a", "dict"],
        ]
        for doc in bad_docs:
            with pytest.raises(InvalidValueError):
                await s.insert("products", doc)
        with pytest.raises(InvalidValueError):
            await s.insert_many("products", [TSHIRT, {"_id": "nan", "x": float("nan")}])
        with pytest.raises(InvalidValueError):
            await s.replace("products", "prod_123", {"price": float("nan")})
        with pytest.raises(InvalidValueError, match="differs"):
            await s.replace("products", "prod_123", {"_id": "other"})
        with pytest.raises(InvalidValueError):
            await s.insert("Bad-Name", {"a": 1})
        assert await s.find("products") == [LAPTOP]
        assert await s.collections() == ["products"]

    run(doc_url, body)


def test_duplicate_id_changes_nothing(doc_url: str) -> None:
    async def body(s: DocumentStore) -> None:
        await s.insert("products", LAPTOP)
        with pytest.raises(DuplicateKeyError, match="prod_123"):
            await s.insert("products", {"_id": "prod_123", "name": "Impostor"})
        with pytest.raises(DuplicateKeyError):
            await s.insert_many("products", [TSHIRT, {"_id": "prod_123", "name": "Impostor"}])
        with pytest.raises(DuplicateKeyError):
            await s.insert_many("products", [TSHIRT, TSHIRT])
        assert await s.find("products") == [LAPTOP]

    run(doc_url, body)


def test_bad_updates_change_nothing(doc_url: str) -> None:
    async def body(s: DocumentStore) -> None:
        await s.insert("p", {"_id": "p1", "name": "Laptop", "stock": 3, "tags": ["a"]})
        before = await s.get("p", "p1")
        value_errors: list[dict[str, Any]] = [
            {"$inc": {"name": 1}},
            {"$inc": {"stock": "1"}},
            {"$inc": {"stock": True}},
            {"$set": {"stock": 4}, "$inc": {"name": 1}},  # the valid part is not applied
            {"$push": {"name": "x"}},
            {"$set": {"name.first": "L"}},
            {"$set": {"tags.first": "x"}},
            {"$set": {"price": float("nan")}},
            {"$inc": {"stock": float("inf")}},
            {"$inc": {"stock": 2**63}},
        ]
        for update in value_errors:
            with pytest.raises(InvalidValueError):
                await s.update("p", "p1", update)
        query_errors: list[Any] = [
            {"$rename": {"name": "title"}},
            {"name": "not an operator"},
            {},
            {"$set": {}},
            {"$set": 5},
            {"$set": {"a": 1, "a.b": 2}},
            {"$set": {"stock": 1}, "$inc": {"stock": 1}},
            {"$set": {"_id": "p2"}},
            {"$set": {"a..b": 1}},
            {"$push": {"tags": {"$each": "ab"}}},
        ]
        for update in query_errors:
            with pytest.raises(InvalidQueryError):
                await s.update("p", "p1", update)
        assert await s.get("p", "p1") == before

    run(doc_url, body)


INJECTIONS = [
    "'; DROP TABLE doc_products; --",
    '" OR 1=1 --',
    "x') OR ('1'='1",
    "$where",
    '{"$gt": ""}',
    "%s %(p0)s ? :p0 $1",
    "\\'\\\"\\\\",
    "]]} ) ; SELECT pg_sleep(5); --",
    "MATCH (n) DETACH DELETE n",
    "null",
    "[1]",
]


def test_injection_attempts_are_stored_as_data(doc_url: str) -> None:
    async def body(s: DocumentStore) -> None:
        await s.insert("products", LAPTOP)
        for i, text in enumerate(INJECTIONS):
            await s.insert(
                "products",
                {"_id": text, "name": text, "meta": {'it\'s "quoted"': text}, "list": [text]},
            )
            assert await s.get("products", text) == {
                "_id": text,
                "name": text,
                "meta": {'it\'s "quoted"': text},
                "list": [text],
            }, i
            assert ids(await s.find("products", {"name": text})) == [text]
            assert ids(await s.find("products", {"list": {"$in": [text]}})) == [text]
            assert ids(await s.find("products", {"_id": {"$gte": text, "$lte": text}})) == [text]
        assert await s.count("products") == len(INJECTIONS) + 1
        assert await s.collections() == ["products"]
        assert await s.get("products", "prod_123") == LAPTOP
        with pytest.raises(InvalidQueryError):
            await s.find("products", {"name') OR 1=1 --": 1})
        with pytest.raises(InvalidValueError):
            await s.insert("products; DROP TABLE x", {"a": 1})

    run(doc_url, body)


# -- indexes --------------------------------------------------------------------------


def test_indexes_keep_results_the_same(doc_url: str) -> None:
    filters: list[dict[str, Any]] = [
        {"category": "electronics", "price": {"$lt": 1000}},
        {"price": {"$gte": 100, "$lte": 1000}},
        {"specs.cpu": "Intel i7"},
        {"reviews.rating": 5},
        {"reviews.rating": {"$gte": 4}},
        {"sizes": "M"},
        {"name": {"$gt": "M"}},
        {"category": {"$in": ["books", "clothing"]}},
        {"price": None},
        {"specs.cpu": {"$exists": False}},
    ]
    sort = [("price", -1), ("name", 1)]

    async def body(s: DocumentStore) -> None:
        await s.insert_many("products", PRODUCTS)
        before = [await s.find("products", f, sort=sort) for f in filters]
        assert all(before[:6]), "each of the first filters matches something"
        made = [
            await s.create_index("products", path)
            for path in ("category", "price", "specs.cpu", "reviews.rating", "sizes", "name")
        ]
        assert all(isinstance(info, IndexInfo) for info in made)
        assert await s.create_index("products", "price") == made[1]  # idempotent
        listed = await s.indexes("products")
        assert [i.path for i in listed] == sorted(
            ["category", "price", "specs.cpu", "reviews.rating", "sizes", "name"]
        )
        assert {i.name for i in listed} == {i.name for i in made}
        after = [await s.find("products", f, sort=sort) for f in filters]
        assert after == before
        # and they stay right for documents written after the index
        await s.insert("products", {"_id": "late", "category": "electronics", "price": 5})
        assert "late" in ids(await s.find("products", filters[0]))
        fresh = await s.create_index("fresh", "a.b")  # creates the collection
        assert (fresh.collection, fresh.path) == ("fresh", "a.b")
        assert "fresh" in await s.collections()
        assert await s.indexes("fresh") == [fresh]

    run(doc_url, body)


# -- property: deep documents and filters, each backend against the evaluator --------

_keys = st.sampled_from(["a", "b", "c"])
_deep_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.sampled_from([0.5, 2.0]),
    st.sampled_from(["", "a", "B", "[a", "é"]),
)
_deep_values = st.recursive(
    _deep_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=3)),
    max_leaves=8,
)
_deep_paths = st.lists(_keys, min_size=1, max_size=3).map(".".join)


@st.composite
def _deep_leaves(draw: st.DrawFn) -> dict[str, Any]:
    path = draw(_deep_paths)
    op = draw(st.sampled_from(["eq", "$ne", "$gt", "$lte", "$in", "$exists"]))
    if op == "eq":
        return {path: draw(_deep_values)}
    if op in ("$gt", "$lte"):
        return {path: {op: draw(st.one_of(st.integers(-2, 2), st.sampled_from(["", "a", "B"])))}}
    if op == "$in":
        return {path: {op: draw(st.lists(_deep_values, max_size=3))}}
    if op == "$exists":
        return {path: {op: draw(st.booleans())}}
    return {path: {op: draw(_deep_values)}}


def test_deep_filters_agree_with_the_evaluator(doc_url: str) -> None:
    numbers = itertools.count()

    @given(
        docs=st.lists(st.dictionaries(_keys, _deep_values, max_size=3), min_size=1, max_size=6),
        data=st.data(),
    )
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def check(docs: list[dict[str, Any]], data: st.DataObject) -> None:
        rows = [{"_id": f"d{i}", **doc} for i, doc in enumerate(docs)]
        held = [pair for row in rows for pair in _held_values(row) if pair[0] != "_id"]
        leaf = _deep_leaves()
        if held:  # half the time, a value some document holds, so that it matches
            held_leaf = st.sampled_from(sorted(held, key=canon)).flatmap(
                lambda pair: st.sampled_from(
                    [{pair[0]: pair[1]}, {pair[0]: {"$in": [pair[1]]}}, {pair[0]: {"$ne": pair[1]}}]
                )
            )
            leaf = st.one_of(leaf, held_leaf)
        flt = data.draw(st.one_of(leaf, st.builds(lambda a, b: {"$or": [a, b]}, leaf, leaf)))
        node = parse_filter(flt)
        expected = [row["_id"] for row in rows if matches(node, row)]
        name = f"deep_{next(numbers)}"

        async def body() -> list[str]:
            await store.insert_many(name, rows)
            try:
                return ids(await store.find(name, flt))
            finally:
                await store.drop_collection(name)

        assert runner.run(body()) == expected

    with asyncio.Runner() as runner:
        store = runner.run(_open(doc_url))
        try:
            check()
        finally:
            runner.run(store.close())


# -- stateful: each backend against the in-memory model -------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.5, -1.5, 2.0]),
    st.sampled_from(["", "a", "b", "B", "é", "a'b", "$x"]),
)
_values = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=3),
    st.fixed_dictionaries({}, optional={"x": _scalars, "y": _scalars}),
    st.lists(st.fixed_dictionaries({}, optional={"x": _scalars, "y": _scalars}), max_size=2),
)
_bodies = st.fixed_dictionaries(
    {}, optional={"a": _values, "b": _values, "tags": _values, "n": _values}
)
_ids = st.sampled_from(["d1", "d2", "d3", "d4", "d5"])
_paths = st.sampled_from(["a", "b", "tags", "n", "n.x", "a.x", "tags.y", "_id"])
_ranged = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, "a", "B", ""]))


@st.composite
def _leaves(draw: st.DrawFn) -> dict[str, Any]:
    path = draw(_paths)
    op = draw(st.sampled_from(["eq", "$eq", "$ne", "$lt", "$gte", "$in", "$nin", "$exists"]))
    if op == "eq":
        return {path: draw(_values)}
    if op in ("$lt", "$gte"):
        return {path: {op: draw(_ranged)}}
    if op in ("$in", "$nin"):
        return {path: {op: draw(st.lists(_scalars, max_size=3))}}
    if op == "$exists":
        return {path: {op: draw(st.booleans())}}
    return {path: {op: draw(_values)}}


_filters = st.recursive(
    st.one_of(st.just({}), _leaves()),
    lambda inner: st.one_of(
        st.builds(lambda items: {"$or": items}, st.lists(inner, min_size=1, max_size=2)),
        st.builds(lambda items: {"$and": items}, st.lists(inner, min_size=1, max_size=2)),
        st.builds(lambda items: {"$nor": items}, st.lists(inner, min_size=1, max_size=2)),
    ),
    max_leaves=3,
)
_updates = st.one_of(
    st.builds(lambda p, v: {"$set": {p: v}}, st.sampled_from(["a", "n.x", "b"]), _values),
    st.builds(lambda p: {"$unset": {p: ""}}, st.sampled_from(["a", "n.x", "tags"])),
    st.builds(lambda p, v: {"$inc": {p: v}}, st.sampled_from(["a", "n.x"]), st.integers(-2, 2)),
    st.builds(lambda p, v: {"$push": {p: v}}, st.sampled_from(["tags", "a"]), _scalars),
)
_sort_keys = st.lists(
    st.tuples(st.sampled_from(["a", "b", "n.x", "tags"]), st.sampled_from([1, -1])),
    min_size=1,
    max_size=2,
    unique_by=lambda key: key[0],
)
_sorts = st.one_of(st.none(), _sort_keys)
_collection_numbers = itertools.count()


def _held_values(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """(path, value) for every value a filter path can reach in ``value``, array
    elements included."""
    found: list[tuple[str, Any]] = []
    if path:
        found.append((path, value))
    if isinstance(value, list) and path:
        for item in value:
            found.append((path, item))
            if isinstance(item, dict):
                found += [(p, v) for p, v in _held_values(item, path) if p != path]
    elif isinstance(value, dict):
        for key, item in value.items():
            found += _held_values(item, f"{path}.{key}" if path else key)
    return found


class DocumentMachine(RuleBasedStateMachine):
    """Drives one backend and a dict of documents with the same operations."""

    runner: ClassVar[asyncio.Runner]
    store: ClassVar[DocumentStore]

    def __init__(self) -> None:
        super().__init__()
        self.collection = f"machine_{next(_collection_numbers)}"
        self.run(self.store.create_collection(self.collection))
        self.model: dict[str, dict[str, Any]] = {}

    def teardown(self) -> None:
        self.run(self.store.drop_collection(self.collection))

    def run(self, coro: Awaitable[Any]) -> Any:
        async def wrap() -> Any:
            return await coro

        return self.runner.run(wrap())

    @rule(doc_id=_ids, body=_bodies)
    def insert(self, doc_id: str, body: dict[str, Any]) -> None:
        doc = {"_id": doc_id, **body}
        if doc_id in self.model:
            with pytest.raises(DuplicateKeyError):
                self.run(self.store.insert(self.collection, doc))
        else:
            assert self.run(self.store.insert(self.collection, doc)) == doc_id
            self.model[doc_id] = doc

    @rule(doc_id=_ids, body=_bodies)
    def replace(self, doc_id: str, body: dict[str, Any]) -> None:
        replaced = self.run(self.store.replace(self.collection, doc_id, body))
        assert replaced == (doc_id in self.model)
        if replaced:
            self.model[doc_id] = {"_id": doc_id, **body}

    @rule(doc_id=_ids, update=_updates)
    def update(self, doc_id: str, update: dict[str, Any]) -> None:
        expected: dict[str, Any] | None = None
        if doc_id in self.model:
            try:
                expected = apply_update(self.model[doc_id], parse_update(update))
            except InvalidValueError:
                with pytest.raises(InvalidValueError):
                    self.run(self.store.update(self.collection, doc_id, update))
                return
        changed = self.run(self.store.update(self.collection, doc_id, update))
        assert changed == (expected is not None)
        if expected is not None:
            self.model[doc_id] = expected

    @rule(doc_id=_ids)
    def delete(self, doc_id: str) -> None:
        assert self.run(self.store.delete(self.collection, doc_id)) == (doc_id in self.model)
        self.model.pop(doc_id, None)

    @rule(
        flt=_filters,
        sort=_sorts,
        skip=st.integers(0, 3),
        limit=st.one_of(st.none(), st.integers(0, 3)),
    )
    def find(
        self,
        flt: dict[str, Any],
        sort: list[tuple[str, int]] | None,
        skip: int,
        limit: int | None,
    ) -> None:
        node = parse_filter(flt)
        expected = [d for d in self.model.values() if matches(node, d)]
        expected = sort_documents(expected, parse_sort(sort))[skip:]
        if limit is not None:
            expected = expected[:limit]
        got = self.run(self.store.find(self.collection, flt, sort=sort, skip=skip, limit=limit))
        assert canon(got) == canon(expected)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def find_by_stored_value(self, data: st.DataObject) -> None:
        """Filters on a value that a document holds (often in an array), so they match."""
        doc = data.draw(st.sampled_from(sorted(self.model)), label="doc")
        held = sorted(_held_values(self.model[doc]), key=lambda pair: canon(pair))
        path, value = data.draw(st.sampled_from(held or [("a", None)]), label="held")
        ops = ["eq", "eq", "$in", "$ne", "$nin"]
        if kind(value) in ("number", "string"):
            ops += ["$lt", "$lte", "$gt", "$gte"]
        op = data.draw(st.sampled_from(ops), label="op")
        if op == "eq":
            flt: dict[str, Any] = {path: value}
        elif op in ("$in", "$nin"):
            flt = {path: {op: [value, data.draw(_scalars, label="other")]}}
        else:
            flt = {path: {op: value}}
        self.find(flt, data.draw(_sorts, label="sort"), 0, None)
        self.count(flt)

    @rule(sort=_sort_keys)
    def sorted_scan(self, sort: list[tuple[str, int]]) -> None:
        self.find({}, sort, 0, None)

    @rule(flt=_filters)
    def count(self, flt: dict[str, Any]) -> None:
        node = parse_filter(flt)
        expected = sum(1 for d in self.model.values() if matches(node, d))
        assert self.run(self.store.count(self.collection, flt)) == expected

    @invariant()
    def same_documents(self) -> None:
        got = self.run(self.store.find(self.collection))
        assert canon(got) == canon(list(self.model.values()))


def test_state_machine_agrees_with_the_model(doc_url: str) -> None:
    # One store (and event loop) for every example; each example gets a fresh collection.
    with asyncio.Runner() as runner:
        store = runner.run(_open(doc_url))
        machine = type("Machine", (DocumentMachine,), {"runner": runner, "store": store})
        try:
            run_state_machine_as_test(
                machine,
                settings=settings(
                    max_examples=25,
                    stateful_step_count=25,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow],
                    # no "explain" phase: it traces every line and takes minutes on a server
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                ),
            )
        finally:
            runner.run(store.close())


def test_skip_and_limit_beyond_64_bits_are_invalid_values(doc_url: str) -> None:
    """SQLite raised OverflowError for these; every backend now refuses them alike."""

    async def body(s: DocumentStore) -> None:
        await s.insert("c", {"_id": "a"})
        with pytest.raises(InvalidValueError, match="limit"):
            await s.find("c", limit=2**64)
        with pytest.raises(InvalidValueError, match="skip"):
            await s.find("c", skip=2**63)
        assert [d["_id"] for d in await s.find("c", skip=0, limit=2**63 - 1)] == ["a"]

    run(doc_url, body)
