"""PostgreSQL-specific behaviour of the relational store."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from multistore.errors import StoreTimeoutError
from multistore.stores._registry import open_store
from multistore.stores.relational import _postgres
from multistore.stores.relational._postgres import PostgresRelationalStore

pytestmark = pytest.mark.server


async def _open(url: str) -> PostgresRelationalStore:
    store = await open_store(url, model="relational")
    assert isinstance(store, PostgresRelationalStore)
    return store


def test_casts_dollar_quotes_and_jsonb_operators(postgres_url: str) -> None:
    async def main() -> None:
        store = await _open(postgres_url)
        try:
            await store.execute_script(
                """
                CREATE TABLE docs (id INT PRIMARY KEY, body JSONB);
                CREATE FUNCTION greet(name TEXT) RETURNS TEXT AS $$
                    SELECT 'hello; :not_a_param ' || name;
                $$ LANGUAGE sql;
                """
            )
            await store.execute(
                "INSERT INTO docs VALUES (:id, :body::jsonb)", {"id": 1, "body": '{"k": 1}'}
            )
            assert await store.fetch_val("SELECT greet(:n)", {"n": "bob"}) == (
                "hello; :not_a_param bob"
            )
            assert (
                await store.fetch_val(
                    "SELECT id FROM docs WHERE body ? 'k' AND id = :id", {"id": 1}
                )
                == 1
            )
            assert (
                await store.fetch_val("SELECT :v::numeric(6,2)::text", {"v": "3.14159"}) == "3.14"
            )
        finally:
            await store.close()

    asyncio.run(main())


def test_native_is_the_pool(postgres_url: str) -> None:
    async def main() -> None:
        store = await _open(postgres_url)
        try:
            assert isinstance(store.native, AsyncConnectionPool)
            async with store.native.connection() as conn:
                cur = await conn.execute("SELECT 1")
                assert await cur.fetchone() == (1,)
        finally:
            await store.close()

    asyncio.run(main())


def test_exhausted_pool_times_out(postgres_url: str) -> None:
    async def main() -> None:
        store = await _open(f"{postgres_url}?pool_max=1&connect_timeout=0.5")
        try:
            async with store.connection():
                with pytest.raises(StoreTimeoutError, match="pool_max=1"):
                    await store.fetch_val("SELECT 1")
            assert await store.fetch_val("SELECT 1") == 1
        finally:
            await store.close()

    asyncio.run(main())


def test_kept_connection_ended_by_the_server_is_replaced_before_use(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No idle-time check at all: only the look at the socket can notice the end.
    monkeypatch.setattr(_postgres, "_CHECK_AFTER_IDLE", 3600.0)

    async def main() -> None:
        store = await _open(postgres_url)
        killer = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
        try:
            pid = await store.fetch_val("SELECT pg_backend_pid()")
            assert await store.fetch_val("SELECT pg_backend_pid()") == pid  # the kept one
            cur = await killer.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
            assert await cur.fetchone() == (True,)  # returns once the backend has exited
            # sent on the dead connection, this would raise StoreUnavailableError
            new_pid = await store.fetch_val("SELECT pg_backend_pid()")
            assert new_pid is not None and new_pid != pid
            assert await store.execute("SELECT 1") == 1
        finally:
            await killer.close()
            await store.close()

    asyncio.run(main())


_SLEEP = "SELECT pg_sleep(3599.5)"  # a text no other statement has; outlasts the test


async def _sleeps_running(watcher: psycopg.AsyncConnection[Any]) -> int:
    cur = await watcher.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = %s",
        (_SLEEP,),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def _wait_for_sleeps(watcher: psycopg.AsyncConnection[Any], count: int) -> None:
    """Wait until ``count`` of the sleeps run on the server; raise after 30 s."""
    deadline = time.monotonic() + 30
    while (running := await _sleeps_running(watcher)) != count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{running} sleeps run on the server, not {count}")
        await asyncio.sleep(0.02)


def test_cancelled_statement_leaves_the_next_call_working(postgres_url: str) -> None:
    async def main() -> None:
        # one connection: if the cancelled call did not hand it back, the next one times out
        store = await _open(f"{postgres_url}?pool_max=1&connect_timeout=1")
        watcher = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
        try:
            call = asyncio.ensure_future(store.fetch_val(_SLEEP))
            await _wait_for_sleeps(watcher, 1)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert await store.fetch_val("SELECT 1") == 1
            assert await store.fetch_val("SELECT 2") == 2
            # not stuck behind the sleep, nor leaving it running: the server stops it
            # (if it were left, it would run for an hour, far past this wait)
            await _wait_for_sleeps(watcher, 0)
        finally:
            await watcher.execute(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query = %s", (_SLEEP,)
            )
            await watcher.close()
            await store.close()

    asyncio.run(main())
