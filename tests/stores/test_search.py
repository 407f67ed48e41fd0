"""The search conformance suite: every test runs against every search backend.

Backends: tantivy (a directory under tmp_path) and PostgreSQL full text (a fresh
database on a real throwaway server). Each test opens its own store inside
``asyncio.run`` so no pool crosses event loops. Both backends must give the same
totals, ids, orders (when sorted by a field) and facet counts; only scores differ.
The last test feeds both the same random corpus and queries and compares them.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import random
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from multistore.errors import (
    ConflictError,
    InvalidQueryError,
    InvalidValueError,
    NotFoundError,
    StoreError,
)
from multistore.stores import open_store
from multistore.stores.search import FieldType, SearchResult, SearchSchema, SearchStore

Body = Callable[[SearchStore], Awaitable[None]]
TEXT, KEYWORD, NUMERIC = FieldType.TEXT, FieldType.KEYWORD, FieldType.NUMERIC

SCHEMA = SearchSchema(
    {
        "title": TEXT,
        "description": TEXT,
        "category": KEYWORD,
        "brand": KEYWORD,
        "price": NUMERIC,
        "rating": NUMERIC,
    }
)

# fmt: off
CATALOG: list[dict[str, Any]] = [
    {"id": "p1", "title": "Gaming Laptop", "description": "Fast laptop with a big screen",
     "category": "electronics", "brand": "acme", "price": 999.99, "rating": 4.5},
    {"id": "p2", "title": "Business Laptop", "description": "Light and quiet",
     "category": "electronics", "brand": "globex", "price": 1000.0, "rating": 4.0},
    {"id": "p3", "title": "Budget laptops sale", "description": "Two cheap notebooks",
     "category": "electronics", "brand": "acme", "price": 449.0, "rating": 3.5},
    {"id": "p4", "title": "Ultrabook laptop", "description": "Thin and premium",
     "category": "electronics", "brand": "initech", "price": 1899.0},
    {"id": "p5", "title": "Wireless Headphones", "description": "Noise cancelling",
     "category": "electronics", "brand": "globex", "price": 199.0, "rating": 4.8},
    {"id": "p6", "title": "T-Shirt", "description": "Blue cotton shirt",
     "category": "clothing", "brand": "acme", "price": 19.99, "rating": 4.1},
    {"id": "p7", "title": "Laptop sleeve", "description": "Protects your laptop",
     "category": "accessories", "brand": "acme", "price": 29.5, "rating": 3.9},
    {"id": "p8", "title": "The Cat in the Hat", "description": "A children's book",
     "category": "books", "price": 8.99, "rating": 5.0},
    {"id": "p9", "title": "Running shoes", "description": "Runs fast on any road",
     "category": "clothing", "brand": "initech", "price": 89.0, "rating": 4.3},
    {"id": "p10", "title": "Laptop repair handbook", "description": "Fix your own computer",
     "category": "books", "brand": "globex", "price": 35.0, "rating": 4.6},
]
# fmt: on
ALL_IDS = {doc["id"] for doc in CATALOG}
BY_PRICE = ["p8", "p6", "p7", "p10", "p9", "p5", "p3", "p1", "p2", "p4"]
LAPTOP_IDS = {"p1", "p2", "p3", "p4", "p7", "p10"}


@pytest.fixture(params=["tantivy", pytest.param("postgresql", marks=pytest.mark.server)])
def search_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "tantivy":
        return f"tantivy:///{tmp_path / 'search'}"
    return str(request.getfixturevalue("postgres_url"))


async def _open(url: str) -> SearchStore:
    store = await open_store(url, model="search")
    assert isinstance(store, SearchStore)
    return store


def run(url: str, body: Body, *, catalog: bool = True) -> None:
    """Open the store at ``url`` (with the catalog indexed as ``products`` unless told
    otherwise), run ``body(store)`` and close it, on one event loop."""

    async def main() -> None:
        store = await _open(url)
        try:
            if catalog:
                await store.create_index("products", SCHEMA)
                await store.index("products", CATALOG)
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


async def ids(store: SearchStore, query: str = "", **kwargs: Any) -> set[str]:
    """The ids of every match (checking that the page holds all of them)."""
    result = await store.search("products", query, limit=1000, **kwargs)
    assert result.total == len(result.hits)
    return set(result.ids)


async def snapshot(store: SearchStore, index: str = "products") -> dict[str, dict[str, Any]]:
    """Every document of an index, by id."""
    result = await store.search(index, "", limit=1000)
    return {hit.id: hit.doc for hit in result.hits}


def as_stored(doc: dict[str, Any]) -> dict[str, Any]:
    """A catalog document as the store returns it (NUMERIC values as floats)."""
    return {k: float(v) if k in ("price", "rating") else v for k, v in doc.items()}


# -- the seed's catalog search --------------------------------------------------------


def test_seed_catalog_laptops_in_electronics_under_1000_by_price_desc(search_url: str) -> None:
    # The seed: find laptops, category electronics, price < 1000, sorted by price desc.
    async def body(s: SearchStore) -> None:
        below_1000 = math.nextafter(1000.0, -math.inf)  # ranges include their bounds
        result = await s.search(
            "products",
            "laptop",
            filters={"category": "electronics"},
            ranges={"price": (None, below_1000)},
            sort=("price", "desc"),
        )
        assert result.ids == ["p1", "p3"]  # p2 costs exactly 1000, p4 1899
        assert result.total == 2
        assert [hit.doc["price"] for hit in result.hits] == [999.99, 449.0]
        assert result.hits[0].doc == as_stored(CATALOG[0])
        assert all(hit.score == 0.0 for hit in result.hits)  # sorted by a field
        inclusive = await s.search(
            "products",
            "laptop",
            filters={"category": "electronics"},
            ranges={"price": (None, 1000)},
        )
        assert set(inclusive.ids) == {"p1", "p2", "p3"}

    run(search_url, body)


def test_facet_counts_by_category(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        everything = await s.search("products", facets=["category", "brand"], limit=1)
        assert everything.total == 10
        assert len(everything.hits) == 1
        # counted over the whole result, not the page; most frequent first
        assert everything.facets == {
            "category": {"electronics": 5, "books": 2, "clothing": 2, "accessories": 1},
            "brand": {"acme": 4, "globex": 3, "initech": 2},  # p8 has no brand
        }
        assert list(everything.facets["category"]) == [
            "electronics",
            "books",
            "clothing",
            "accessories",
        ]
        laptops = await s.search("products", "laptop", facets=["category"])
        assert laptops.facets == {"category": {"electronics": 4, "accessories": 1, "books": 1}}
        filtered = await s.search(
            "products", "laptop", filters={"brand": "acme"}, facets=["category"], limit=0
        )
        assert filtered.total == 3
        assert filtered.hits == []
        assert filtered.facets == {"category": {"electronics": 2, "accessories": 1}}
        none = await s.search("products", "zeppelin", facets=["category"])
        assert none.total == 0
        assert none.facets == {"category": {}}

    run(search_url, body)


def test_stemming_finds_other_forms_of_a_word(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        assert await ids(s, "laptop") == LAPTOP_IDS
        assert await ids(s, "laptops") == LAPTOP_IDS  # "laptops" finds "laptop"
        assert await ids(s, "LAPTOP") == LAPTOP_IDS
        assert await ids(s, "run") == {"p9"}  # "Running", "Runs"
        assert await ids(s, "notebook") == {"p3"}
        assert await ids(s, "cancel") == {"p5"}
        assert await ids(s, "children") == {"p8"}

    run(search_url, body)


def test_pagination_keeps_the_total(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        pages: list[str] = []
        for offset in range(0, 12, 3):
            page = await s.search("products", sort=("price", "asc"), offset=offset, limit=3)
            assert page.total == 10
            pages += page.ids
        assert pages == BY_PRICE
        beyond = await s.search("products", sort=("price", "asc"), offset=50, limit=3)
        assert (beyond.total, beyond.hits) == (10, [])
        empty_page = await s.search("products", "laptop", limit=0)
        assert (empty_page.total, empty_page.hits) == (6, [])
        relevance: list[str] = []
        for offset in (0, 2, 4):
            page = await s.search("products", "laptop", offset=offset, limit=2)
            assert page.total == 6
            relevance += page.ids
        assert sorted(relevance) == sorted(LAPTOP_IDS)  # no duplicates, nothing missing

    run(search_url, body)


def test_sort_by_numeric_field_both_ways_missing_last(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        asc = await s.search("products", sort=("rating", "asc"), limit=20)
        assert asc.ids == ["p3", "p7", "p2", "p6", "p9", "p1", "p10", "p5", "p8", "p4"]
        desc = await s.search("products", sort=("rating", "desc"), limit=20)
        assert desc.ids == ["p8", "p5", "p10", "p1", "p9", "p6", "p2", "p7", "p3", "p4"]
        by_price = await s.search("products", "laptop", sort=("price", "desc"))
        assert by_price.ids == ["p4", "p2", "p1", "p3", "p10", "p7"]

    run(search_url, body)


def test_relevance_order_puts_the_better_match_first(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        result = await s.search("products", "laptop sleeve")
        assert result.ids == ["p7"]
        assert result.hits[0].score > 0
        ranked = await s.search("products", "laptop", limit=10)
        scores = [hit.score for hit in ranked.hits]
        assert scores == sorted(scores, reverse=True)
        assert all(score > 0 for score in scores)

    run(search_url, body)


# -- query language -----------------------------------------------------------------


def test_words_phrases_and_exclusions(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        assert await ids(s, "fast laptop") == {"p1"}  # words are ANDed
        assert await ids(s, '"gaming laptop"') == {"p1"}
        assert await ids(s, '"laptop gaming"') == set()  # order matters in a phrase
        assert await ids(s, '"cat in the hat"') == {"p8"}  # stop words keep their place
        assert await ids(s, '"cat hat"') == set()
        assert await ids(s, "laptop -gaming") == LAPTOP_IDS - {"p1"}
        assert await ids(s, "laptop -sleeve -repair") == {"p1", "p2", "p3", "p4"}
        assert await ids(s, '-"gaming laptop"') == ALL_IDS - {"p1"}
        assert await ids(s, "-laptop") == ALL_IDS - LAPTOP_IDS
        assert await ids(s, "t-shirt") == {"p6"}  # punctuation inside a word: a phrase
        assert await ids(s, '"cotton shirt"') == {"p6"}
        assert await ids(s, '"shirt cotton"') == set()

    run(search_url, body)


def test_blank_stop_word_and_operator_queries(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        assert await ids(s, "") == ALL_IDS
        assert await ids(s, "   \t") == ALL_IDS
        assert await ids(s, "*") == ALL_IDS  # no words at all: like a blank query
        assert await ids(s, "the") == set()  # only stop words: nothing
        assert await ids(s, "the and of") == set()
        assert await ids(s, '""') == ALL_IDS
        # Operators of other query languages are words or separators here.
        assert await ids(s, "laptop OR shoes") == set()  # "or" is a stop word; AND stays
        assert await ids(s, "laptop AND gaming") == {"p1"}
        assert await ids(s, "title:laptop") == set()  # the phrase "title laptop"
        assert await ids(s, "lapt*") == set()  # no prefix search
        assert await ids(s, "laptop~2") == set()  # the phrase "laptop 2"
        assert await ids(s, "(gaming) +laptop") == {"p1"}

    run(search_url, body)


# -- filters and ranges ---------------------------------------------------------------


def test_keyword_filters(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        assert await ids(s, filters={"category": "books"}) == {"p8", "p10"}
        assert await ids(s, filters={"brand": ["acme", "initech"]}) == {
            "p1",
            "p3",
            "p4",
            "p6",
            "p7",
            "p9",
        }
        assert await ids(s, filters={"category": "electronics", "brand": "globex"}) == {
            "p2",
            "p5",
        }
        assert await ids(s, filters={"brand": []}) == set()
        assert await ids(s, filters={"category": "Electronics"}) == set()  # exact, case too
        assert await ids(s, filters={"category": "electro"}) == set()

    run(search_url, body)


def test_numeric_ranges_include_their_bounds(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        assert await ids(s, ranges={"price": (29.5, 89.0)}) == {"p7", "p10", "p9"}
        assert await ids(s, ranges={"price": (1000, None)}) == {"p2", "p4"}
        assert await ids(s, ranges={"rating": (None, 3.9)}) == {"p3", "p7"}
        assert await ids(s, ranges={"rating": (None, None)}) == ALL_IDS - {"p4"}
        assert await ids(s, ranges={"price": (100.0, 10.0)}) == set()
        assert await ids(s, ranges={"price": (0, 500), "rating": (4.5, 5)}) == {"p5", "p8", "p10"}
        combined = await s.search(
            "products",
            "laptop",
            filters={"brand": ["acme", "globex"]},
            ranges={"price": (30, None)},
            facets=["brand"],
            sort=("price", "asc"),
        )
        assert combined.ids == ["p10", "p3", "p1", "p2"]
        assert combined.facets == {"brand": {"acme": 2, "globex": 2}}

    run(search_url, body)


# -- documents ------------------------------------------------------------------------


def test_get_returns_the_document_with_floats(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        assert await s.get("products", "p6") == as_stored(CATALOG[5])
        assert await s.get("products", "nope") is None
        await s.index("products", [{"id": "int", "title": "Integer price", "price": 5}])
        doc = await s.get("products", "int")
        assert doc == {"id": "int", "title": "Integer price", "price": 5.0}
        assert isinstance(doc["price"], float)
        await s.index("products", [{"id": "nulls", "title": "Gaps", "brand": None, "price": None}])
        assert await s.get("products", "nulls") == {
            "id": "nulls",
            "title": "Gaps",
            "brand": None,
            "price": None,
        }
        assert await ids(s, filters={"brand": "acme"}) == {"p1", "p3", "p6", "p7"}
        assert "nulls" not in await ids(s, ranges={"price": (None, None)})

    run(search_url, body)


def test_reindex_replaces_and_delete_removes(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        changed = dict(CATALOG[0], title="Gaming Desktop", description="Tower PC", price=799.0)
        await s.index("products", [changed])
        assert await ids(s, "gaming") == {"p1"}
        assert "p1" not in await ids(s, "laptop")
        assert await ids(s, "desktop") == {"p1"}
        assert await s.get("products", "p1") == as_stored(changed)
        assert (await s.search("products")).total == 10  # replaced, not added
        electronics = await s.search("products", filters={"category": "electronics"}, limit=0)
        assert electronics.total == 5

        assert await s.delete("products", "p1") is True
        assert await s.get("products", "p1") is None
        assert await ids(s, "gaming") == set()
        assert await s.delete("products", "p1") is False
        everything = await s.search("products", facets=["category"], limit=0)
        assert everything.total == 9
        assert everything.facets["category"]["electronics"] == 4

        # Within one batch, the last document with an id wins.
        await s.index(
            "products",
            [
                {"id": "dup", "title": "first version", "category": "a"},
                {"id": "dup", "title": "second version", "category": "b"},
            ],
        )
        assert await ids(s, "version") == {"dup"}
        assert await ids(s, "first") == set()
        assert await s.get("products", "dup") == {
            "id": "dup",
            "title": "second version",
            "category": "b",
        }
        await s.index("products", [])  # an empty batch is fine

    run(search_url, body)


def test_index_management(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        assert await s.indexes() == []
        await s.create_index("products", SCHEMA)
        await s.index("products", CATALOG[:3])
        await s.create_index("products", SCHEMA)  # same schema: a no-op that keeps data
        assert set((await s.search("products")).ids) == {"p1", "p2", "p3"}
        other = SearchSchema({"title": TEXT})
        with pytest.raises(ConflictError):
            await s.create_index("products", other)
        assert await s.schema("products") == SCHEMA
        assert set((await s.search("products")).ids) == {"p1", "p2", "p3"}

        await s.create_index("notes", SearchSchema({"body": "text", "tag": "keyword"}, "key"))
        assert await s.indexes() == ["notes", "products"]
        await s.index("notes", [{"key": "n1", "body": "Buy laptops", "tag": "todo"}])
        assert (await s.search("notes", "laptop")).ids == ["n1"]
        assert (await s.search("products", "buy")).total == 0  # indexes are separate

        await s.drop_index("products")
        assert await s.indexes() == ["notes"]
        with pytest.raises(NotFoundError):
            await s.search("products")
        with pytest.raises(NotFoundError):
            await s.drop_index("products")
        await s.create_index("products", other)  # recreated empty, with the new schema
        assert (await s.search("products")).total == 0
        assert await s.schema("products") == other

    run(search_url, body, catalog=False)


def test_id_field_listed_as_keyword_is_filterable(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        schema = SearchSchema({"sku": KEYWORD, "name": TEXT}, id_field="sku")
        await s.create_index("skus", schema)
        await s.index("skus", [{"sku": "A-1", "name": "red pen"}, {"sku": "B-2", "name": "pen"}])
        result = await s.search("skus", "pen", filters={"sku": "A-1"}, facets=["sku"])
        assert result.ids == ["A-1"]
        assert result.facets == {"sku": {"A-1": 1}}

    run(search_url, body, catalog=False)


def test_documents_survive_reopening(search_url: str) -> None:
    run(search_url, lambda s: asyncio.sleep(0))  # creates and fills "products"

    async def body(s: SearchStore) -> None:
        assert await s.indexes() == ["products"]
        assert await s.schema("products") == SCHEMA
        assert await ids(s, "laptop") == LAPTOP_IDS
        assert await s.get("products", "p8") == as_stored(CATALOG[7])

    run(search_url, body, catalog=False)


def test_close_is_idempotent_and_a_closed_store_refuses_work(search_url: str) -> None:
    async def body() -> None:
        store = await _open(search_url)
        await store.create_index("products", SCHEMA)
        await store.close()
        await store.close()
        with pytest.raises(StoreError):
            await store.indexes()
        with pytest.raises(StoreError):
            await store.search("products", "laptop")

    asyncio.run(body())


# -- bad input: the exact error, and nothing changed -----------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"id": "n2", "title": "x", "colour": "red"}, id="unknown-field"),
        pytest.param({"id": "n2", "price": "cheap"}, id="str-for-numeric"),
        pytest.param({"id": "n2", "price": True}, id="bool-for-numeric"),
        pytest.param({"id": "n2", "price": math.nan}, id="nan"),
        pytest.param({"id": "n2", "price": math.inf}, id="inf"),
        pytest.param({"id": "n2", "price": 10**400}, id="huge-int"),
        pytest.param({"id": "n2", "title": 42}, id="int-for-text"),
        pytest.param({"id": "n2", "category": ["a", "b"]}, id="list-for-keyword"),
        pytest.param({"id": "n2", "title": "nul\x00byte"}, id="nul-in-text"),
        pytest.param({"id": "n2", "title": "lone \ud800 surrogate"}, id="surrogate"),
        pytest.param({"id": "n2", "category": "k" * 2000}, id="keyword-too-long"),
        pytest.param({"title": "no id"}, id="missing-id"),
        pytest.param({"id": 7, "title": "numeric id"}, id="int-id"),
        pytest.param({"id": "", "title": "empty id"}, id="empty-id"),
        pytest.param(["id", "n2"], id="not-a-dict"),
    ],
)
def test_invalid_document_rejects_the_whole_batch(search_url: str, bad: Any) -> None:
    async def body(s: SearchStore) -> None:
        before = await snapshot(s)
        batch = [
            {"id": "n1", "title": "A new laptop", "category": "electronics", "price": 1.0},
            dict(CATALOG[0], title="Changed title"),
            bad,
        ]
        with pytest.raises(InvalidValueError):
            await s.index("products", batch)
        assert await snapshot(s) == before
        assert await s.get("products", "n1") is None
        assert await ids(s, "changed") == set()

    run(search_url, body)


def test_batch_that_is_not_a_list_is_rejected(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        before = await snapshot(s)
        with pytest.raises(InvalidValueError):
            await s.index("products", {"id": "n1", "title": "x"})  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError):
            await s.index("products", "id")  # type: ignore[arg-type]
        assert await snapshot(s) == before

    run(search_url, body)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"query": '"unbalanced phrase'}, id="unbalanced-quote"),
        pytest.param({"query": 'laptop "gaming'}, id="unbalanced-quote-late"),
        pytest.param({"query": 42}, id="query-not-str"),
        pytest.param({"filters": {"title": "x"}}, id="filter-on-text"),
        pytest.param({"filters": {"colour": "red"}}, id="filter-on-unknown"),
        pytest.param({"filters": {"category": 3}}, id="filter-value-int"),
        pytest.param({"filters": {"category": ["a", 3]}}, id="filter-list-with-int"),
        pytest.param({"ranges": {"category": (1, 2)}}, id="range-on-keyword"),
        pytest.param({"ranges": {"price": (math.nan, 2)}}, id="range-nan"),
        pytest.param({"ranges": {"price": (1, math.inf)}}, id="range-inf"),
        pytest.param({"ranges": {"price": ("1", 2)}}, id="range-str-bound"),
        pytest.param({"ranges": {"price": (1, 2, 3)}}, id="range-triple"),
        pytest.param({"facets": ["price"]}, id="facet-on-numeric"),
        pytest.param({"facets": "category"}, id="facets-not-list"),
        pytest.param({"sort": ("category", "asc")}, id="sort-on-keyword"),
        pytest.param({"sort": ("price", "up")}, id="sort-direction"),
        pytest.param({"sort": ("nope", "asc")}, id="sort-on-unknown"),
        pytest.param({"limit": -1}, id="negative-limit"),
        pytest.param({"offset": -1}, id="negative-offset"),
        pytest.param({"limit": True}, id="bool-limit"),
        pytest.param({"offset": 99_999, "limit": 10}, id="window-too-large"),
    ],
)
def test_invalid_search_raises_invalid_query(search_url: str, kwargs: dict[str, Any]) -> None:
    async def body(s: SearchStore) -> None:
        before = await snapshot(s)
        args = dict(kwargs)
        query = args.pop("query", "laptop")
        with pytest.raises(InvalidQueryError):
            await s.search("products", query, **args)
        assert await snapshot(s) == before

    run(search_url, body)


def test_unknown_index_is_not_found(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        before = await snapshot(s)
        for name in ("missing", "Bad Name", "products; DROP TABLE x"):
            with pytest.raises(NotFoundError):
                await s.search(name, "laptop")
            with pytest.raises(NotFoundError):
                await s.index(name, [{"id": "x"}])
            with pytest.raises(NotFoundError):
                await s.get(name, "p1")
            with pytest.raises(NotFoundError):
                await s.delete(name, "p1")
            with pytest.raises(NotFoundError):
                await s.drop_index(name)
            with pytest.raises(NotFoundError):
                await s.schema(name)
        assert await s.indexes() == ["products"]
        assert await snapshot(s) == before

    run(search_url, body)


def test_invalid_index_names_and_ids(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        before = await snapshot(s)
        for name in ("Products", "2nd", "with-dash", "x" * 41, "", "a b", "drop;table"):
            with pytest.raises(InvalidValueError):
                await s.create_index(name, SCHEMA)
        with pytest.raises(InvalidValueError):
            await s.get("products", "")
        with pytest.raises(InvalidValueError):
            await s.delete("products", 5)  # type: ignore[arg-type]
        assert await s.indexes() == ["products"]
        assert await snapshot(s) == before

    run(search_url, body)


def test_schema_validation() -> None:
    with pytest.raises(InvalidValueError):
        SearchSchema({"_hidden": TEXT})
    with pytest.raises(InvalidValueError):
        SearchSchema({"bad-name": TEXT})
    with pytest.raises(InvalidValueError):
        SearchSchema({"title": "fulltext"})
    with pytest.raises(InvalidValueError):
        SearchSchema({"id": NUMERIC})  # the id field may only be a KEYWORD
    with pytest.raises(InvalidValueError):
        SearchSchema({"title": TEXT}, id_field="")
    schema = SearchSchema({"title": "TEXT", "n": "numeric"})
    assert schema.fields == {"title": TEXT, "n": NUMERIC}
    assert SearchSchema.from_dict(schema.to_dict()) == schema


# -- injection: quotes, SQL and query syntax are data --------------------------------


INJECTION_DOCS: list[dict[str, Any]] = [
    {"id": "i1", "title": "Robert'); DROP TABLE students;--", "category": "x' OR '1'='1"},
    {"id": "i2", "title": "notes on title:foo OR 1=1", "category": "foo"},
    {"id": "i3", "title": "foo bar", "category": "$where"},
    {"id": "i4", "title": 'He said "hello" \\ bye', "category": 'quo"te\\'},
    {"id": "i5'; DELETE FROM x; --", "title": "strange id", "category": "*"},
]


def test_injection_through_queries_and_values_is_data(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        await s.index("products", INJECTION_DOCS)
        before = await snapshot(s)
        assert len(before) == 15
        assert await ids(s, "title:foo OR 1=1") == {"i2"}  # not "every doc with foo"
        assert await ids(s, "foo") == {"i2", "i3"}
        assert await ids(s, "Robert'); DROP TABLE students;--") == {"i1"}
        assert await ids(s, "' OR '1'='1") == {"i2"}  # the words "1 1", next to each other
        assert await ids(s, "'; DELETE FROM products; --") == set()
        assert await ids(s, '"hello" \\') == {"i4"}
        assert await ids(s, "foo AND NOT bar") == {"i3"}  # stop words: this is "foo bar"
        assert await ids(s, "foo -bar") == {"i2"}
        assert await ids(s, filters={"category": "x' OR '1'='1"}) == {"i1"}
        assert await ids(s, filters={"category": "' OR 1=1 --"}) == set()
        assert await ids(s, filters={"category": "$where"}) == {"i3"}
        assert await ids(s, filters={"category": 'quo"te\\'}) == {"i4"}
        assert await ids(s, filters={"category": "*"}) == {"i5'; DELETE FROM x; --"}
        assert await ids(s, filters={"category": "foo OR category:*"}) == set()
        assert await s.get("products", "i5'; DELETE FROM x; --") == INJECTION_DOCS[4]
        facets = (await s.search("products", "foo", facets=["category"])).facets
        assert facets == {"category": {"$where": 1, "foo": 1}}
        assert await snapshot(s) == before
        assert await s.indexes() == ["products"]

    run(search_url, body)


# -- the public API ------------------------------------------------------------------


def test_search_package_exports() -> None:
    module = importlib.import_module("multistore.stores.search")
    assert set(module.__all__) == {
        "FieldType",
        "Hit",
        "SearchResult",
        "SearchSchema",
        "SearchStore",
        "SortOrder",
    }
    for name in module.__all__:
        assert hasattr(module, name)


def test_docs_example_runs(search_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The interface example of docs/stores/search.md, unchanged, on every backend."""
    doc = Path(__file__).parents[2] / "docs" / "stores" / "search.md"
    examples = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    code, _, _ = examples[0].partition("with tempfile.TemporaryDirectory()")
    namespace: dict[str, Any] = {}
    exec(compile(code, str(doc), "exec"), namespace)
    asyncio.run(namespace["main"](search_url))
    assert capsys.readouterr().out.splitlines() == [
        "2 ['p1', 'p3']",
        "4 1 {'category': {'electronics': 3, 'accessories': 1}}",
        "['p1']",
        "['p1', 'p2', 'p3']",
        "Cotton T-Shirt",
        "True",
    ]
    exec(compile(examples[1], str(doc), "exec"), {})  # the config example compiles


# -- both backends agree on a random corpus ---------------------------------------------

VOCABULARY = (  # noqa: SIM905 - a word list reads best as text
    "laptop laptops gaming game games screen screens fast faster run running runs "
    "blue red green cotton shirt shirts book books reading reader cat hat dog dogs "
    "the a of in and or not is it to 2024 42 usb café naïve über Straße ZEPPELIN "
    "wi-fi e-mail o'neil x86 mp3"
).split()
CATEGORIES = ["alpha", "beta", "gamma", "delta", "Alpha", "al'pha"]


def _random_doc(rng: random.Random, n: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": f"d{n}"}
    for field in ("title", "description"):
        if rng.random() < 0.9:
            words = rng.choices(VOCABULARY, k=rng.randint(1, 8))
            doc[field] = rng.choice([" ", ", ", "; ", " - "]).join(words)
    if rng.random() < 0.85:
        doc["category"] = rng.choice(CATEGORIES)
    if rng.random() < 0.7:
        doc["brand"] = rng.choice(["acme", "globex", "initech"])
    if rng.random() < 0.9:
        doc["price"] = n * 1.5 + 0.25  # distinct, so field orders are total
    if rng.random() < 0.8:
        doc["rating"] = n % 7 + 0.5
    return doc


def _random_query(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 3)):
        kind = rng.random()
        if kind < 0.55:
            parts.append(rng.choice(VOCABULARY))
        elif kind < 0.8:
            parts.append('"' + " ".join(rng.choices(VOCABULARY, k=rng.randint(2, 3))) + '"')
        else:
            parts.append("-" + rng.choice(VOCABULARY))
    return " ".join(parts)


def _random_search(rng: random.Random) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"query": _random_query(rng), "facets": ["category", "brand"]}
    if rng.random() < 0.3:
        kwargs["filters"] = {"category": rng.sample(CATEGORIES, rng.randint(1, 3))}
    if rng.random() < 0.3:
        low = rng.choice([None, 30.0, 100.25])
        kwargs["ranges"] = {"price": (low, rng.choice([None, 200.0, 250.75]))}
    if rng.random() < 0.5:
        kwargs["sort"] = (rng.choice(["price", "rating"]), rng.choice(["asc", "desc"]))
    return kwargs


async def _answers(store: SearchStore, searches: list[dict[str, Any]]) -> list[Any]:
    out = []
    for kwargs in searches:
        args = dict(kwargs)
        result: SearchResult = await store.search("products", args.pop("query"), **args, limit=500)
        if args.get("sort", ("",))[0] == "price":  # prices are distinct: a total order
            priced = [hit.id for hit in result.hits if hit.doc.get("price") is not None]
            unpriced = [hit.id for hit in result.hits if hit.doc.get("price") is None]
            assert result.ids == priced + unpriced  # missing values last, in any order
            order = priced + sorted(unpriced)
        else:
            order = sorted(result.ids)
        out.append((result.total, order, result.facets))
    return out


@pytest.mark.server
def test_tantivy_and_postgres_agree_on_a_random_corpus(tmp_path: Path, postgres_url: str) -> None:
    rng = random.Random(20240611)
    docs = [_random_doc(rng, n) for n in range(300)]
    searches = [_random_search(rng) for _ in range(150)]

    async def answers(url: str) -> list[Any]:
        store = await _open(url)
        try:
            await store.create_index("products", SCHEMA)
            for start in range(0, len(docs), 100):
                await store.index("products", docs[start : start + 100])
            for n in range(0, 300, 7):  # some updates and deletes too
                await store.index("products", [dict(docs[n], title="updated laptop")])
            for n in range(3, 300, 11):
                await store.delete("products", f"d{n}")
            return await _answers(store, searches)
        finally:
            await store.close()

    tantivy = asyncio.run(answers(f"tantivy:///{tmp_path / 'search'}"))
    postgres = asyncio.run(answers(postgres_url))
    assert sum(1 for total, _, _ in tantivy if total) > 40  # the queries do find things
    for kwargs, ours, theirs in zip(searches, tantivy, postgres, strict=True):
        assert ours == theirs, kwargs


def test_numbers_beyond_any_backend_are_refused_alike(search_url: str) -> None:
    async def body(s: SearchStore) -> None:
        with pytest.raises(InvalidValueError, match="limit"):
            await s.search("products", "laptop", limit=2**64)
        with pytest.raises(InvalidValueError, match="offset"):
            await s.search("products", "laptop", offset=2**63)
        with pytest.raises(InvalidQueryError, match="finite"):
            await s.search("products", ranges={"price": (10**400, None)})
        with pytest.raises(InvalidValueError, match="too large"):
            await s.index("products", [{"id": "big", "title": "x", "price": 10**400}])
        assert await s.get("products", "big") is None

    run(search_url, body)
