"""SQLite-only document tests: the file on disk, two stores on one file, query plans."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from multistore.stores import open_store
from multistore.stores.document import DocumentStore


async def _open(url: str) -> DocumentStore:
    store = await open_store(url, model="document")
    assert isinstance(store, DocumentStore)
    return store


def test_documents_survive_reopening_the_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'deep' / 'dir' / 'docs.db'}"

    async def write() -> None:
        store = await _open(url)
        await store.insert("profiles", {"_id": "u1", "name": "Alice", "tags": ["a"]})
        await store.create_index("profiles", "name")
        await store.close()
        await store.close()  # closing twice is fine

    async def read() -> None:
        store = await _open(url)
        try:
            assert await store.get("profiles", "u1") == {
                "_id": "u1",
                "name": "Alice",
                "tags": ["a"],
            }
            assert [i.path for i in await store.indexes("profiles")] == ["name"]
        finally:
            await store.close()

    asyncio.run(write())
    asyncio.run(read())


def test_two_stores_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"

    async def body() -> None:
        a, b = await _open(url), await _open(url)
        try:
            await a.insert("counters", {"_id": "c", "n": 0})
            await asyncio.gather(
                *(s.update("counters", "c", {"$inc": {"n": 1}}) for s in [a, b] * 10)
            )
            assert await a.get("counters", "c") == {"_id": "c", "n": 20}
            assert await b.collections() == ["counters"]
        finally:
            await a.close()
            await b.close()

    asyncio.run(body())


def test_prefix_keeps_stores_apart(tmp_path: Path) -> None:
    path = tmp_path / "prefixed.db"

    async def body() -> None:
        shop = await _open(f"sqlite:///{path}?prefix=shop_")
        blog = await _open(f"sqlite:///{path}?prefix=blog_")
        try:
            await shop.insert("items", {"_id": "1"})
            await blog.insert("posts", {"_id": "1"})
            assert await shop.collections() == ["items"]
            assert await blog.collections() == ["posts"]
        finally:
            await shop.close()
            await blog.close()
        tables = {
            row[0]
            for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")
            if not row[0].startswith(("sqlite_", "ix_"))
        }
        assert tables == {
            "shop_doc_items",
            "shop_doc__indexes",
            "blog_doc_posts",
            "blog_doc__indexes",
        }

    asyncio.run(body())


def test_in_memory_store() -> None:
    async def body() -> None:
        store = await _open("sqlite:///:memory:")
        try:
            await store.insert("x", {"_id": "1", "a": [1, 2]})
            assert await store.find("x", {"a": 2}) == [{"_id": "1", "a": [1, 2]}]
        finally:
            await store.close()

    asyncio.run(body())


def _product(i: int) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": f"p{i}",
        "category": ["electronics", "clothing", "books", "toys"][i % 4],
        "price": (i * 37) % 2000,
        "specs": {"cpu": ["i5", "i7", "m1"][i % 3]},
    }
    if i % 3 == 0:
        doc["reviews"] = [{"rating": i % 5 + 1}]
    return doc


def test_the_planner_uses_the_indexes(tmp_path: Path) -> None:
    async def body() -> None:
        store = await _open(f"sqlite:///{tmp_path / 'plans.db'}")
        try:
            await store.insert_many("products", [_product(i) for i in range(2000)])
            seq_scan = await store.explain("products", {"category": "books"})
            assert "USING INDEX ix_" not in seq_scan, seq_scan
            made = {
                path: await store.create_index("products", path)
                for path in ("category", "price", "specs.cpu", "reviews.rating")
            }
            cases: dict[str, dict[str, Any]] = {
                "category": {"category": "books"},
                "price": {"price": {"$gt": 1990}},
                "specs.cpu": {"specs.cpu": "m1"},
                "reviews.rating": {"reviews.rating": {"$gte": 5}},
            }
            for path, flt in cases.items():
                plan = await store.explain("products", flt, sort=[("price", -1)])
                assert f"USING INDEX {made[path].name}" in plan, (flt, plan)
            plan = await store.explain("products", {"_id": "p7"})
            assert "(id=?)" in plan, plan
        finally:
            await store.close()

    asyncio.run(body())
