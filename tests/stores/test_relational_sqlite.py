"""SQLite-specific behaviour of the relational store: one connection, one thread."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from multistore.errors import InvalidQueryError, NotFoundError, StoreTimeoutError, UsageError
from multistore.stores._registry import open_store
from multistore.stores.relational import RelationalStore
from multistore.stores.relational._sqlite import SQLiteRelationalStore


async def _open(url: str) -> SQLiteRelationalStore:
    store = await open_store(url, model="relational")
    assert isinstance(store, SQLiteRelationalStore)
    return store


def test_pragmas_and_native(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _open(f"sqlite:///{tmp_path}/a.db?timeout=2")
        try:
            assert isinstance(store.native, sqlite3.Connection)
            assert await store.fetch_val("PRAGMA foreign_keys") == 1
            assert await store.fetch_val("PRAGMA journal_mode") == "wal"
            assert await store.fetch_val("PRAGMA busy_timeout") == 2000
            version = await store.run(lambda db: db.execute("SELECT 41 + 1").fetchone())
            assert version == (42,)
        finally:
            await store.close()
        await store.close()  # twice is fine

    asyncio.run(main())


def test_memory_database() -> None:
    async def main() -> None:
        store = await _open("sqlite:///:memory:")
        try:
            await store.execute("CREATE TABLE t (x INT)")
            await store.execute("INSERT INTO t VALUES (:x)", {"x": 1})
            assert await store.fetch_val("SELECT x FROM t") == 1
        finally:
            await store.close()

    asyncio.run(main())


def test_missing_file_with_create_false(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        asyncio.run(_open(f"sqlite:///{tmp_path}/missing.db?create=false"))


def test_store_statement_inside_its_own_transaction_is_refused(tmp_path: Path) -> None:
    """The only connection is leased to the transaction: using the store itself would
    deadlock, so it raises at once and the transaction goes on."""

    async def main() -> None:
        store = await _open(f"sqlite:///{tmp_path}/a.db")
        try:
            await store.execute("CREATE TABLE t (x INT)")
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES (1)")
                with pytest.raises(UsageError, match="already holds"):
                    await store.execute("INSERT INTO t VALUES (2)")
                await tx.execute("INSERT INTO t VALUES (3)")
            rows = await store.fetch_all("SELECT x FROM t ORDER BY x")
            assert [r["x"] for r in rows] == [1, 3]
        finally:
            await store.close()

    asyncio.run(main())


def test_writers_of_two_stores_are_serialised_with_busy_timeout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/a.db?timeout=0.3"

    async def main() -> None:
        first, second = await _open(url), await _open(url)
        try:
            await first.execute("CREATE TABLE t (x INT)")
            async with first.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES (1)")
                # the URL's timeout is the busy timeout (not the 30 s default)
                assert await second.fetch_val("PRAGMA busy_timeout") == 300
                with pytest.raises(StoreTimeoutError, match="locked"):
                    async with second.transaction() as other:
                        await other.execute("INSERT INTO t VALUES (2)")
                # readers are not blocked by the writer (WAL)
                assert await second.fetch_val("SELECT COUNT(*) FROM t") == 0
            async with second.transaction() as other:
                await other.execute("INSERT INTO t VALUES (2)")
            assert await first.fetch_val("SELECT COUNT(*) FROM t") == 2
        finally:
            await first.close()
            await second.close()

    asyncio.run(main())


def test_concurrent_transactions_in_one_process_are_serialised(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _open(f"sqlite:///{tmp_path}/a.db")
        try:
            await store.execute("CREATE TABLE counter (n INT)")
            await store.execute("INSERT INTO counter VALUES (0)")

            async def bump() -> None:
                async with store.transaction() as tx:
                    n = await tx.fetch_val("SELECT n FROM counter")
                    await asyncio.sleep(0)  # let the other tasks try to interleave
                    await tx.execute("UPDATE counter SET n = :n", {"n": n + 1})

            await asyncio.gather(*(bump() for _ in range(20)))
            assert await store.fetch_val("SELECT n FROM counter") == 20
        finally:
            await store.close()

    asyncio.run(main())


def test_script_with_trigger_body(tmp_path: Path) -> None:
    async def main() -> None:
        store: RelationalStore = await _open(f"sqlite:///{tmp_path}/a.db")
        try:
            await store.execute_script(
                """
                CREATE TABLE t (x INT);
                CREATE TABLE log (msg TEXT);
                CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN
                    INSERT INTO log VALUES ('inserted; ' || NEW.x);
                    INSERT INTO log VALUES ('twice');
                END;
                INSERT INTO t VALUES (7);
                """
            )
            rows = await store.fetch_all("SELECT msg FROM log ORDER BY rowid")
            assert [r["msg"] for r in rows] == ["inserted; 7", "twice"]
        finally:
            await store.close()

    asyncio.run(main())


def test_positional_placeholders_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _open(f"sqlite:///{tmp_path}/a.db")
        try:
            with pytest.raises(InvalidQueryError, match=":name"):
                await store.fetch_all("SELECT ?")
            with pytest.raises(InvalidQueryError, match="one statement"):
                await store.execute("SELECT 1; SELECT 2")
        finally:
            await store.close()

    asyncio.run(main())


def test_a_transaction_cancelled_at_any_step_leaves_the_connection_usable(
    tmp_path: Path,
) -> None:
    """Cancel a transaction after 0, 1, 2, … turns of the event loop (while BEGIN runs,
    inside the block, while COMMIT runs), until one finishes first: the next transaction
    on the store's only connection begins and commits (a cancelled BEGIN once left the
    connection inside a transaction nothing ended: "cannot start a transaction within a
    transaction")."""

    async def main() -> None:
        store = await _open(f"sqlite:///{tmp_path}/a.db")
        try:
            await store.execute("CREATE TABLE t (x INT PRIMARY KEY)")

            async def insert(x: int) -> None:
                async with store.transaction() as tx:
                    await tx.execute("INSERT INTO t VALUES (:x)", {"x": x})

            for turns in range(10_000):
                task = asyncio.ensure_future(insert(2 * turns))
                for _ in range(turns):
                    await asyncio.sleep(0)
                finished = task.done()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await insert(2 * turns + 1)
                assert await store.fetch_val("SELECT x FROM t WHERE x = :x", {"x": 2 * turns + 1})
                if finished:
                    break
        finally:
            await store.close()

    asyncio.run(main())
