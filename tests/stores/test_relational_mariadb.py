"""MariaDB-specific behaviour of the relational store."""

from __future__ import annotations

import asyncio
import time

import pytest

from multistore.errors import StoreTimeoutError
from multistore.stores._registry import open_store
from multistore.stores.relational._mariadb import MariaDBRelationalStore

pytestmark = pytest.mark.server


async def _open(url: str) -> MariaDBRelationalStore:
    store = await open_store(url, model="relational")
    assert isinstance(store, MariaDBRelationalStore)
    return store


def test_portable_quoting_and_concatenation(mariadb_url: str) -> None:
    async def main() -> None:
        store = await _open(mariadb_url)
        try:
            await store.execute('CREATE TABLE "order" ("key" INT PRIMARY KEY, note TEXT)')
            await store.execute(
                'INSERT INTO "order" ("key", note) VALUES (:k, :n)', {"k": 1, "n": "a\\b'c"}
            )
            assert await store.fetch_val("""SELECT note || '!' FROM "order" """) == "a\\b'c!"
            assert await store.fetch_val(r"SELECT 'x\'y' || :z", {"z": ":z"}) == "x'y:z"
            assert await store.fetch_val("SELECT @@character_set_connection") == "utf8mb4"
        finally:
            await store.close()

    asyncio.run(main())


def test_native_is_a_connection_factory(mariadb_url: str) -> None:
    async def main() -> None:
        store = await _open(mariadb_url)
        try:
            conn = store.native()
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                    assert cur.fetchone() == (1,)
            finally:
                conn.close()
        finally:
            await store.close()

    asyncio.run(main())


def test_exhausted_pool_times_out(mariadb_url: str) -> None:
    async def main() -> None:
        store = await _open(f"{mariadb_url}?pool_max=1&connect_timeout=0.5")
        try:
            async with store.connection():
                started = time.monotonic()
                with pytest.raises(StoreTimeoutError, match="pool_max=1"):
                    await store.fetch_val("SELECT 1")
                assert time.monotonic() - started < 3
            assert await store.fetch_val("SELECT 1") == 1
        finally:
            await store.close()

    asyncio.run(main())


def test_statements_run_in_parallel_on_pooled_threads(mariadb_url: str) -> None:
    async def main() -> None:
        store = await _open(f"{mariadb_url}?pool_max=4")
        try:
            started = time.monotonic()
            await asyncio.gather(*(store.fetch_val("SELECT SLEEP(0.5)") for _ in range(4)))
            assert time.monotonic() - started < 1.5  # not 4 x 0.5 s one after another
        finally:
            await store.close()

    asyncio.run(main())
