"""PostgreSQL-only document tests: outages, recovery after a restart, query plans.

The conformance suite (``test_document.py``) covers behaviour; these cover what only a
server backend has: a server that is not there, a server that goes away and comes back
under a store that stays open, and which indexes the planner picks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from multistore.errors import InvalidValueError, StoreUnavailableError
from multistore.lab.servers import PostgresServer, free_port
from multistore.stores import open_store
from multistore.stores.document import DocumentStore

pytestmark = pytest.mark.server

T = TypeVar("T")


async def _open(url: str) -> DocumentStore:
    store = await open_store(url, model="document")
    assert isinstance(store, DocumentStore)
    return store


async def _poll(call: Callable[[], Awaitable[T]], within: float = 30.0) -> T:
    """``call()``'s result once it stops raising StoreUnavailableError; fail after ``within``."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except StoreUnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def test_closed_port_is_unavailable_and_definite() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing?connect_timeout=2"
    with pytest.raises(StoreUnavailableError, match="cannot connect") as info:
        asyncio.run(_open(url))
    assert info.value.definite


def test_store_survives_a_server_restart(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    async def body() -> None:
        store = await _open(f"{postgres_url}?connect_timeout=2&pool_min=2")
        try:
            await store.insert("profiles", {"_id": "u1", "name": "Alice"})
            postgres_server.stop()
            try:
                with pytest.raises(StoreUnavailableError):
                    await store.get("profiles", "u1")
                with pytest.raises(StoreUnavailableError):
                    await store.insert("profiles", {"_id": "u2", "name": "Bob"})
            finally:
                postgres_server.start()
            # The same store object: dead pooled connections are noticed and replaced.
            assert await _poll(lambda: store.get("profiles", "u1")) == {
                "_id": "u1",
                "name": "Alice",
            }
            await store.insert("profiles", {"_id": "u2", "name": "Bob"})
            assert await store.count("profiles") == 2
        finally:
            await store.close()

    try:
        asyncio.run(body())
    finally:
        if not postgres_server.is_running():
            postgres_server.start()


def test_store_survives_a_server_crash(postgres_server: PostgresServer, postgres_url: str) -> None:
    async def body() -> None:
        store = await _open(f"{postgres_url}?connect_timeout=2")
        try:
            await store.insert("profiles", {"_id": "u1", "n": 1})
            postgres_server.kill()
            postgres_server.start()
            assert await _poll(lambda: store.update("profiles", "u1", {"$inc": {"n": 1}}))
            assert await store.get("profiles", "u1") == {"_id": "u1", "n": 2}
        finally:
            await store.close()

    try:
        asyncio.run(body())
    finally:
        if not postgres_server.is_running():
            postgres_server.start()


def _product(i: int) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": f"p{i}",
        "name": f"item {i:05d}",
        "category": ["electronics", "clothing", "books", "toys"][i % 4],
        "price": (i * 37) % 2000,
    }
    if i % 3 == 0:
        doc["reviews"] = [{"user": f"u{i}", "rating": i % 5 + 1}]
    return doc


def test_the_planner_uses_the_indexes(postgres_url: str) -> None:
    async def body() -> None:
        store = await _open(postgres_url)
        try:
            await store.insert_many("products", [_product(i) for i in range(3000)])
            price = await store.create_index("products", "price")
            rating = await store.create_index("products", "reviews.rating")
            async with store.native.connection() as conn:
                # what autovacuum does after a bulk load: statistics, and the GIN index's
                # pending list merged (until then the planner prices the GIN too high)
                await conn.execute("VACUUM ANALYZE doc_products")
            # equality: containment on the collection's GIN index (jsonb_path_ops)
            plan = await store.explain("products", {"name": "item 00042"})
            assert "Bitmap Index Scan on ix_" in plan and "doc @>" in plan, plan
            # ranges: the btree value index, arrays included through the BitmapOr
            plan = await store.explain("products", {"price": {"$gt": 1990}})
            assert f"Index Scan on {price.name}" in plan, plan
            plan = await store.explain("products", {"reviews.rating": {"$gte": 5}})
            assert rating.name in plan, plan
            plan = await store.explain("products", {"_id": "p17"})
            assert "doc_products_id_key" in plan, plan
        finally:
            await store.close()

    asyncio.run(body())


def test_a_value_too_big_for_an_index_is_refused(postgres_url: str) -> None:
    async def body() -> None:
        store = await _open(postgres_url)
        try:
            await store.create_index("posts", "title")
            big = "".join(f"{i:x}" for i in range(3000))  # ~10 kB, incompressible enough
            with pytest.raises(InvalidValueError):
                await store.insert("posts", {"_id": "p1", "title": big})
            assert await store.count("posts") == 0
            await store.insert("posts", {"_id": "p1", "body": big})  # not indexed: fine
        finally:
            await store.close()

    asyncio.run(body())
