"""PostgreSQL-only search tests: the table layout (tsvector + GIN), table prefixes,
the pool, and what happens when the server is down or restarts."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from multistore.errors import StoreTimeoutError, StoreUnavailableError
from multistore.lab.servers import PostgresServer, free_port
from multistore.stores import open_store
from multistore.stores.search import SearchStore
from tests.stores.test_search import CATALOG, LAPTOP_IDS, SCHEMA

pytestmark = pytest.mark.server


async def _open(url: str) -> SearchStore:
    store = await open_store(url, model="search")
    assert isinstance(store, SearchStore)
    return store


def _with_options(url: str, **options: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


def test_table_has_a_tsvector_column_with_a_gin_index(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    async def body() -> None:
        store = await _open(postgres_url)
        try:
            await store.create_index("products", SCHEMA)
            await store.index("products", CATALOG)
        finally:
            await store.close()

    asyncio.run(body())
    database = postgres_url.rsplit("/", 1)[1]
    columns = dict(
        postgres_server.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'search_products'",
            database=database,
        )
    )
    assert columns == {
        "_id": "text",
        "_doc": "jsonb",
        "_tsv": "tsvector",
        "category": "text",
        "brand": "text",
        "price": "double precision",
        "rating": "double precision",
    }
    indexes = [
        row[0]
        for row in postgres_server.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'search_products'",
            database=database,
        )
    ]
    assert any("USING gin (_tsv)" in definition for definition in indexes)
    # The maintained tsvector is PostgreSQL's own 'english' analysis of the text.
    rows = postgres_server.execute(
        "SELECT _id FROM search_products WHERE _tsv @@ to_tsquery('english', 'laptops') "
        "ORDER BY _id",
        database=database,
    )
    assert {row[0] for row in rows} == LAPTOP_IDS
    schema = postgres_server.execute(
        "SELECT schema FROM multistore_search_indexes WHERE name = 'products'",
        database=database,
    )
    assert schema == [(SCHEMA.to_dict(),)]


def test_prefix_keeps_stores_apart(postgres_url: str, postgres_server: PostgresServer) -> None:
    async def body() -> None:
        shop = await _open(_with_options(postgres_url, prefix="shop_"))
        blog = await _open(_with_options(postgres_url, prefix="blog_"))
        try:
            await shop.create_index("products", SCHEMA)
            await shop.index("products", CATALOG)
            assert await blog.indexes() == []
            await blog.create_index("products", SCHEMA)
            assert (await blog.search("products")).total == 0
            assert (await shop.search("products")).total == 10
        finally:
            await shop.close()
            await blog.close()

    asyncio.run(body())
    tables = {
        row[0]
        for row in postgres_server.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
            database=postgres_url.rsplit("/", 1)[1],
        )
    }
    assert tables == {
        "shop_search_products",
        "shop_multistore_search_indexes",
        "blog_search_products",
        "blog_multistore_search_indexes",
    }


def test_concurrent_searches_share_the_pool(postgres_url: str) -> None:
    async def body() -> None:
        store = await _open(_with_options(postgres_url, pool_max=3))
        try:
            await store.create_index("products", SCHEMA)
            await store.index("products", CATALOG)
            results = await asyncio.gather(
                *[store.search("products", "laptop", limit=20) for _ in range(30)]
            )
            assert all(set(r.ids) == LAPTOP_IDS for r in results)
            pool = store.native
            assert isinstance(pool, AsyncConnectionPool)
            assert pool.get_stats()["pool_size"] <= 3
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT count(*) FROM search_products")
                assert await cur.fetchone() == (10,)
        finally:
            await store.close()

    asyncio.run(body())


def test_closed_port_is_unavailable_at_once() -> None:
    # Refused at once, not after the pool timeout: one far past pytest's per-test
    # timeout, so an open that waited it out would fail the test by timing out.
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing?timeout=3600"

    async def body() -> None:
        with pytest.raises(StoreUnavailableError) as caught:
            await _open(url)
        assert caught.value.definite

    asyncio.run(body())


def test_server_down_then_restart_same_store_works(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    async def body() -> None:
        # a pool timeout far past pytest's per-test timeout (see below)
        store = await _open(_with_options(postgres_url, timeout=3600))
        try:
            await store.create_index("products", SCHEMA)
            await store.index("products", CATALOG)
            postgres_server.stop()
            try:
                # Each fails at once as unavailable: waiting out the pool timeout
                # would fail the test by pytest's timeout (or end in a StoreTimeoutError).
                with pytest.raises(StoreUnavailableError):
                    await store.search("products", "laptop")
                with pytest.raises(StoreUnavailableError):
                    await store.index("products", [{"id": "new", "title": "new laptop"}])
                with pytest.raises(StoreUnavailableError):
                    await store.get("products", "p1")
            finally:
                postgres_server.start()
            # The same store object reconnects by itself.
            result = await store.search("products", "laptop", limit=20)
            assert set(result.ids) == LAPTOP_IDS
            await store.index("products", [{"id": "new", "title": "new laptop"}])
            assert await store.get("products", "new") == {"id": "new", "title": "new laptop"}
            assert await store.indexes() == ["products"]
        finally:
            await store.close()

    asyncio.run(body())


def test_reconnect_after_a_crash(postgres_url: str, postgres_server: PostgresServer) -> None:
    async def body() -> None:
        store = await _open(postgres_url)
        try:
            await store.create_index("products", SCHEMA)
            await store.index("products", CATALOG)
            postgres_server.kill()  # SIGKILL: no goodbye to the clients
            try:
                with pytest.raises(StoreUnavailableError):
                    await store.search("products", "laptop")
            finally:
                postgres_server.start()
            assert (await store.search("products", "laptop", limit=20)).total == len(LAPTOP_IDS)
        finally:
            await store.close()

    asyncio.run(body())


def test_statement_timeout_is_a_store_timeout(postgres_url: str) -> None:
    async def body() -> None:
        store = await _open(_with_options(postgres_url, timeout=1))
        try:
            await store.create_index("products", SCHEMA)
            await store.index("products", CATALOG)
            blocker = await psycopg.AsyncConnection.connect(postgres_url)
            try:
                await blocker.execute("LOCK TABLE search_products IN ACCESS EXCLUSIVE MODE")
                with pytest.raises(StoreTimeoutError):
                    await store.search("products", "laptop")
            finally:
                await blocker.rollback()  # releases the lock
                await blocker.close()
            assert (await store.search("products", "laptop", limit=20)).total == len(LAPTOP_IDS)
        finally:
            await store.close()

    asyncio.run(body())


def test_first_operation_after_a_restart_succeeds(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    # The pool still holds connections to the old server process; the first
    # operation after the restart meets one of them and must not fail.
    async def body() -> None:
        store = await _open(_with_options(postgres_url, pool_min=2))
        try:
            await store.create_index("products", SCHEMA)
            await store.index("products", CATALOG)
            await asyncio.gather(*[store.get("products", "p1") for _ in range(4)])
            postgres_server.stop()
            postgres_server.start()
            assert set((await store.search("products", "laptop", limit=20)).ids) == LAPTOP_IDS
            await store.index("products", [{"id": "new", "title": "new"}])
            assert await store.get("products", "new") == {"id": "new", "title": "new"}
        finally:
            await store.close()

    asyncio.run(body())
