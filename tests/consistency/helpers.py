"""Small helpers the saga and outbox tests share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from multistore.stores import open_store
from multistore.stores.relational import RelationalStore


async def open_relational(url: str) -> RelationalStore:
    store = await open_store(url, model="relational")
    assert isinstance(store, RelationalStore)
    return store


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    """Until ``check()`` is true; TimeoutError after ``within`` seconds."""
    give_up = time.monotonic() + within
    while not await check():
        if time.monotonic() > give_up:
            raise TimeoutError(f"not within {within} s: {what}")
        await asyncio.sleep(0.02)
