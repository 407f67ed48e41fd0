"""open_store's result is usable both ways, as httpx's and psycopg's openers are:
awaited (``await``, ``asyncio.run``) it is the store; entered (``async with``) it
opens the store and closes it at the end of the block."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from multistore import InvalidURLError, UsageError, open_store


def test_async_with_without_await_opens_and_closes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sessions.db"

    async def main() -> None:
        async with open_store(url, model="kv") as store:
            await store.set("session:1", "alice")
            assert await store.get("session:1") == b"alice"
        with pytest.raises(UsageError, match="is closed"):
            await store.get("session:1")

    asyncio.run(main())


def test_awaited_it_is_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sessions.db"

    async def main() -> None:
        async with await open_store(url, model="kv") as store:
            await store.set("k", "v")
        again = await open_store(url, model="kv")
        try:
            assert await again.get("k") == b"v"
        finally:
            await again.close()

    asyncio.run(main())
    store = asyncio.run(open_store(url, model="kv"))  # a coroutine, as asyncio.run wants
    asyncio.run(store.close())


def test_the_block_closes_the_store_on_an_error_too(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sessions.db"
    opened = []

    async def main() -> None:
        async with open_store(url, model="kv") as store:
            opened.append(store)
            raise KeyError("boom")

    with pytest.raises(KeyError):
        asyncio.run(main())

    async def closed() -> None:
        with pytest.raises(UsageError, match="is closed"):
            await opened[0].get("k")

    asyncio.run(closed())


def test_nothing_runs_until_it_is_awaited_or_entered(tmp_path: Path) -> None:
    open_store(f"sqlite:///{tmp_path}/never.db", model="kv")
    open_store("nope://x")  # not even parsed yet
    gc.collect()  # no "coroutine was never awaited" warning (warnings are errors here)
    assert list(tmp_path.iterdir()) == []

    async def main() -> None:
        with pytest.raises(InvalidURLError):
            async with open_store("nope://x"):
                pass

    asyncio.run(main())
