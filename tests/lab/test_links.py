"""The lab's links between a coordinator and a real (embedded SQLite) quorum node:
latency on each message leg, lost requests, lost replies after the node applied the
request, refused calls, and messages in flight that arrive though the caller gave up."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from multistore.errors import StoreTimeoutError, StoreUnavailableError
from multistore.lab._latency import Fixed, Latency
from multistore.lab._links import Link
from multistore.replication import SQLiteNode

GROUP = b"k"
HLC = "0000000000001-0000-coordinator0"


class CountingLatency(Latency):
    """A distribution of zero delays that counts how often it is drawn from."""

    spec = "counting"

    def __init__(self) -> None:
        self.draws = 0

    def sample(self, rng: random.Random) -> float:
        self.draws += 1
        return 0.0

    @property
    def mean(self) -> float:
        return 0.0

    def describe(self) -> str:
        return "zero, counted"


@asynccontextmanager
async def opened(tmp_path: Path, **options: object) -> AsyncIterator[tuple[Link, SQLiteNode]]:
    """A link over a node, and a second handle on the same node file to look behind it."""
    link = Link(await SQLiteNode("node0", tmp_path / "n.db").open(), **options)  # type: ignore[arg-type]
    behind = await SQLiteNode("node0", tmp_path / "n.db").open()
    try:
        yield link, behind
    finally:
        await link.close()
        await behind.close()


async def wait_for(condition: Callable[[], Awaitable[bool]], bound: float = 10.0) -> None:
    """Wait until ``condition()`` holds, polling; TimeoutError after ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {bound} s")
        await asyncio.sleep(0.01)


def test_every_call_is_a_request_leg_and_a_reply_leg(tmp_path: Path) -> None:
    async def body() -> None:
        latency = CountingLatency()
        async with opened(tmp_path, latency=latency) as (link, behind):
            assert await link.write_lww(GROUP, b"", HLC, b"blob") is True
            assert latency.draws == 2
            assert await link.read(GROUP) == (HLC, b"blob")
            assert latency.draws == 4
            assert await behind.read(GROUP) == (HLC, b"blob")
            assert link.counts.requests == link.counts.applied == 2

    asyncio.run(body())


def test_lost_replies_hide_a_write_that_was_applied(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path, hang=0.05) as (link, behind):
            link.lose_replies = True
            with pytest.raises(StoreTimeoutError) as caught:
                await link.write_lww(GROUP, b"", HLC, b"blob")
            assert not caught.value.definite  # a lost reply says nothing about the write
            assert await behind.read(GROUP) == (HLC, b"blob")  # ... which took effect
            assert link.counts.replies_lost == 1 and link.counts.applied == 1
            link.lose_replies = False
            assert await link.read(GROUP) == (HLC, b"blob")

    asyncio.run(body())


def test_a_cut_link_loses_the_request(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path, hang=0.05) as (link, behind):
            link.cut = True
            with pytest.raises(StoreTimeoutError):
                await link.write_lww(GROUP, b"", HLC, b"blob")
            assert await behind.read(GROUP) is None
            assert link.counts.requests_lost == 1 and link.counts.applied == 0

    asyncio.run(body())


def test_a_refused_call_is_definite_and_sends_nothing(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as (link, behind):
            link.refused = True
            with pytest.raises(StoreUnavailableError) as caught:
                await link.write_lww(GROUP, b"", HLC, b"blob")
            assert caught.value.definite
            assert await behind.read(GROUP) is None
            assert link.counts.refused == 1

    asyncio.run(body())


def test_a_request_in_flight_arrives_after_the_caller_gave_up(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path, latency=Fixed(0.05, "fixed:50ms")) as (link, behind):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.001):  # the caller stops waiting at once
                    await link.write_lww(GROUP, b"", HLC, b"blob")

            async def landed() -> bool:
                return await behind.read(GROUP) is not None

            await wait_for(landed)
            assert link.counts.applied == 1

    asyncio.run(body())
