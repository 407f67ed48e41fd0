"""Hostile input against every document backend (see ``tests/stores/hostile.py``).

Collection names, documents, ids, filters (unknown and injected operators, SQL in
field names, deep nesting), updates, sorts, projections, skip and limit; every
operation is accepted (an inserted document reads back unchanged, a batch lands
whole) or refused with a ``MultistoreError`` and changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from multistore.stores import open_store
from multistore.stores.document import DocumentStore
from tests.stores.hostile import (
    Op,
    anything,
    drive,
    integers,
    mostly,
    plain_text,
    plain_values,
    scalars,
    texts,
    values,
)

collections = mostly(st.sampled_from(["docs", "canary", "c1"]), texts)
fields = mostly(st.sampled_from(["a", "a.b", "n", "tags", "a.b.c", "x-y", "é"]), texts)
ids = mostly(st.one_of(st.sampled_from(["d1", "canary-1"]), plain_text), st.one_of(texts, anything))
documents = mostly(
    st.dictionaries(
        mostly(st.sampled_from(["a", "n", "tags", "s"]), plain_text), plain_values, max_size=4
    ),
    st.one_of(
        st.dictionaries(st.one_of(fields, integers), values, max_size=4),
        st.fixed_dictionaries({"_id": ids, "a": values}),
        anything,
    ),
)
FIELD_OPS = ["$eq", "$ne", "$lt", "$lte", "$gt", "$gte", "$in", "$nin", "$exists", "$not"]
ODD_OPS = ["$where", "$regex", "$expr", "$elemMatch", "$size", "$all", "$bogus", "$", "$$"]
operands = mostly(plain_values, st.one_of(scalars, values))
filters = st.recursive(
    st.one_of(
        st.dictionaries(fields, operands, max_size=2),
        st.dictionaries(
            fields,
            st.dictionaries(
                mostly(st.sampled_from(FIELD_OPS), st.sampled_from(ODD_OPS)), operands, max_size=2
            ),
            max_size=2,
        ),
        st.just({"$where": "sleep(1000) || true"}),
        anything,
    ),
    lambda inner: st.dictionaries(
        st.sampled_from(["$and", "$or", "$nor", "$not", "a"]),
        st.lists(inner, max_size=3),
        max_size=2,
    ),
    max_leaves=6,
)
updates = mostly(
    st.dictionaries(
        mostly(
            st.sampled_from(["$set", "$unset", "$inc", "$push"]),
            st.sampled_from(["$rename", "set", "$"]),
        ),
        st.dictionaries(fields, operands, max_size=2),
        max_size=2,
    ),
    anything,
)
sorts = mostly(
    st.one_of(st.none(), st.lists(st.tuples(fields, st.sampled_from([1, -1])), max_size=2)),
    st.one_of(st.lists(st.tuples(fields, integers), max_size=2), anything),
)
projections = mostly(
    st.one_of(st.none(), st.lists(fields, max_size=2)),
    st.one_of(st.dictionaries(fields, integers, max_size=2), anything),
)
counts = mostly(st.integers(0, 3), st.one_of(integers, anything))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.server)])
def doc_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'docs.db'}"
    return str(request.getfixturevalue("postgres_url"))


async def snapshot(store: DocumentStore) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name in await store.collections():
        docs = await store.find(name, sort=[("_id", 1)])
        indexes = [(info.path, info.name) for info in await store.indexes(name)]
        state[name] = (docs, indexes)
    return state


def _stored(collection: Any, doc: Any) -> Any:
    async def verify(store: DocumentStore, doc_id: Any) -> None:
        expected = {**doc, "_id": doc_id}
        assert await store.get(collection, doc_id) == expected

    return verify


@st.composite
def ops(draw: st.DrawFn) -> Op[DocumentStore]:
    kind = draw(
        st.sampled_from(
            [
                *("create_collection", "drop_collection", "insert", "insert_many", "get"),
                *("replace", "update", "delete", "find", "count", "create_index", "indexes"),
            ]
        )
    )
    name = draw(collections)
    if kind == "create_collection":
        return Op(kind, lambda s: s.create_collection(name), None, (name,))
    if kind == "drop_collection":
        return Op(kind, lambda s: s.drop_collection(name), None, (name,))
    if kind == "insert":
        doc = draw(documents)
        return Op(kind, lambda s: s.insert(name, doc), _stored(name, doc), (name, doc))
    if kind == "insert_many":
        docs = draw(st.one_of(st.lists(documents, max_size=4), anything))

        async def all_there(store: DocumentStore, new_ids: Any) -> None:
            for doc, doc_id in zip(docs, new_ids, strict=True):
                await _stored(name, doc)(store, doc_id)

        return Op(kind, lambda s: s.insert_many(name, docs), all_there, (name, docs))
    doc_id = draw(ids)
    if kind == "get":
        return Op(kind, lambda s: s.get(name, doc_id), None, (name, doc_id))
    if kind == "replace":
        doc = draw(documents)
        return Op(kind, lambda s: s.replace(name, doc_id, doc), None, (name, doc_id, doc))
    if kind == "update":
        update = draw(updates)
        return Op(kind, lambda s: s.update(name, doc_id, update), None, (name, doc_id, update))
    if kind == "delete":
        return Op(kind, lambda s: s.delete(name, doc_id), None, (name, doc_id))
    if kind == "find":
        flt, sort, proj = draw(filters), draw(sorts), draw(projections)
        skip, limit = draw(counts), draw(st.one_of(st.none(), counts))
        return Op(
            kind,
            lambda s: s.find(name, flt, sort=sort, skip=skip, limit=limit, projection=proj),
            None,
            (name, flt, sort, skip, limit, proj),
        )
    if kind == "count":
        flt = draw(filters)
        return Op(kind, lambda s: s.count(name, flt), None, (name, flt))
    if kind == "create_index":
        path = draw(fields)
        return Op(kind, lambda s: s.create_index(name, path), None, (name, path))
    return Op(kind, lambda s: s.indexes(name), None, (name,))


def test_hostile_document(doc_url: str) -> None:
    async def factory() -> DocumentStore:
        store = await open_store(doc_url, model="document")
        assert isinstance(store, DocumentStore)
        return store

    async def prepare(store: DocumentStore) -> None:
        await store.insert_many(
            "canary", [{"_id": "canary-1", "a": {"b": 1}, "tags": ["x"]}, {"_id": "canary-2"}]
        )
        await store.create_index("canary", "a.b")

    stats = drive(factory, ops(), snapshot, prepare=prepare)
    assert stats.accepted and stats.refused
