"""MariaDB-specific behaviour of the relational store."""

from __future__ import annotations

import asyncio

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
                with pytest.raises(StoreTimeoutError, match="pool_max=1"):
                    await store.fetch_val("SELECT 1")
            assert await store.fetch_val("SELECT 1") == 1
        finally:
            await store.close()

    asyncio.run(main())


_SLEEP = "SELECT SLEEP(1.2345)"  # a text no other statement has


def test_statements_run_in_parallel_on_pooled_threads(mariadb_url: str) -> None:
    async def main() -> None:
        store = await _open(f"{mariadb_url}?pool_max=4")
        monitor = await _open(mariadb_url)  # its own connection, outside the store's pool
        try:
            calls = asyncio.gather(*(store.fetch_val(_SLEEP) for _ in range(4)))
            # Watch the server run them; a store that ran them one after another would
            # never have two running at once.
            most = 0
            while not calls.done() and most < 4:
                running = await monitor.fetch_val(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = :sql",
                    {"sql": _SLEEP},
                )
                most = max(most, int(running))
                await asyncio.sleep(0.02)
            assert await calls == [0, 0, 0, 0]
            assert most >= 2, f"at most {most} of the 4 sleeps ran at the same time"
        finally:
            await monitor.close()
            await store.close()

    asyncio.run(main())
