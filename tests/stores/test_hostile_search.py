"""Hostile input against every search backend (see ``tests/stores/hostile.py``).

Index names, schemas, documents (hostile ids, text, keywords and numbers), query
strings full of engine syntax and SQL, filters, ranges, facets, sorts, offsets and
limits; every operation is accepted (an indexed batch is all readable) or refused
with a ``MultistoreError`` and changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from multistore.stores import open_store
from multistore.stores.search import FieldType, SearchSchema, SearchStore
from tests.stores.hostile import (
    Op,
    anything,
    drive,
    floats,
    integers,
    mostly,
    numbers,
    plain_text,
    texts,
    values,
)

SCHEMA = SearchSchema(
    {"title": FieldType.TEXT, "brand": FieldType.KEYWORD, "price": FieldType.NUMERIC}
)
names = mostly(st.sampled_from(["products", "canary"]), texts)
ids = mostly(plain_text, st.one_of(texts, integers, anything))
QUERY_SYNTAX = [
    "title:foo OR bar AND NOT baz",
    '"unbalanced',
    '-"neg phrase" -x',
    "* ? ~ ^ ( ) [ ] { } \\ / : !",
    "') OR 1=1; --",
    "laptop && rm -rf /",
    "a" * 3000,
    "wi-fi",
]
queries = mostly(st.one_of(st.sampled_from(QUERY_SYNTAX), plain_text), st.one_of(texts, anything))
documents = mostly(
    st.fixed_dictionaries(
        {"id": plain_text, "title": plain_text, "brand": plain_text, "price": st.floats(-1e9, 1e9)}
    ),
    st.one_of(
        st.dictionaries(st.sampled_from(["id", "title", "brand", "price", "other"]), values),
        st.fixed_dictionaries({"id": ids, "price": numbers, "brand": texts}),
        anything,
    ),
)
#: A schema, or the fields of one to build inside the operation (building checks them).
schemas = mostly(
    st.just(SCHEMA),
    st.one_of(
        st.dictionaries(texts, st.sampled_from([*FieldType, "text", "bogus"]), max_size=3), anything
    ),
)


async def _create(store: SearchStore, name: Any, schema: Any) -> None:
    if isinstance(schema, dict):
        schema = SearchSchema(schema)
    await store.create_index(name, schema)


@pytest.fixture(params=["tantivy", pytest.param("postgresql", marks=pytest.mark.server)])
def search_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "tantivy":
        return f"tantivy:///{tmp_path / 'search'}"
    return str(request.getfixturevalue("postgres_url"))


async def snapshot(store: SearchStore) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name in await store.indexes():
        found = await store.search(name, limit=1000)
        state[name] = (await store.schema(name), sorted(found.ids), found.total)
    return state


@st.composite
def ops(draw: st.DrawFn) -> Op[SearchStore]:
    kind = draw(
        st.sampled_from(
            [*("create_index", "drop_index", "index", "index", "delete", "get"), *["search"] * 4]
        )
    )
    name = draw(names)
    if kind == "create_index":
        name = draw(mostly(st.just("p2"), names))
        schema = draw(schemas)
        return Op(kind, lambda s: _create(s, name, schema), None, (name, schema))
    if kind == "drop_index":  # mostly of an index made here, so that "products" stays
        gone = draw(mostly(st.just("p2"), texts))
        return Op(kind, lambda s: s.drop_index(gone), None, (gone,))
    if kind == "index":
        docs = draw(mostly(st.lists(documents, max_size=3), anything))

        async def all_there(store: SearchStore, _: Any) -> None:
            for doc in docs:
                stored = await store.get(name, doc["id"])
                assert stored is not None and stored["id"] == doc["id"]

        return Op(kind, lambda s: s.index(name, docs), all_there, (name, docs))
    if kind in ("delete", "get"):
        doc_id = draw(ids)
        call = (
            (lambda s: s.delete(name, doc_id))
            if kind == "delete"
            else (lambda s: s.get(name, doc_id))
        )
        return Op(kind, call, None, (name, doc_id))
    if kind == "schema":
        return Op(kind, lambda s: s.schema(name), None, (name,))
    query = draw(queries)
    filters = draw(
        mostly(
            st.one_of(
                st.none(),
                st.fixed_dictionaries({"brand": st.one_of(plain_text, st.lists(plain_text))}),
            ),
            st.one_of(st.dictionaries(texts, st.one_of(texts, values)), anything),
        )
    )
    ranges = draw(
        mostly(
            st.one_of(
                st.none(),
                st.fixed_dictionaries({"price": st.tuples(st.none() | floats, st.none() | floats)}),
            ),
            st.one_of(st.dictionaries(texts, st.tuples(numbers, numbers)), anything),
        )
    )
    facets = draw(
        mostly(st.one_of(st.none(), st.just(["brand"])), st.one_of(st.lists(texts), anything))
    )
    sort = draw(
        mostly(
            st.one_of(st.none(), st.tuples(st.just("price"), st.sampled_from(["asc", "desc"]))),
            st.one_of(st.tuples(texts, texts), anything),
        )
    )
    offset = draw(mostly(st.integers(0, 5), st.one_of(integers, anything)))
    limit = draw(mostly(st.integers(0, 20), st.one_of(integers, anything)))
    return Op(
        kind,
        lambda s: s.search(
            name,
            query,
            filters=filters,
            ranges=ranges,
            facets=facets,
            sort=sort,
            offset=offset,
            limit=limit,
        ),
        None,
        (name, query, filters, ranges, facets, sort, offset, limit),
    )


def test_hostile_search(search_url: str) -> None:
    async def factory() -> SearchStore:
        store = await open_store(search_url, model="search")
        assert isinstance(store, SearchStore)
        return store

    async def prepare(store: SearchStore) -> None:
        await store.create_index("canary", SCHEMA)
        await store.index("canary", [{"id": "c1", "title": "a canary", "brand": "b", "price": 1.0}])
        await store.create_index("products", SCHEMA)

    stats = drive(factory, ops(), snapshot, prepare=prepare)
    assert stats.accepted and stats.refused
