"""Shared helpers for the multi-master tests: manual clocks, node groups, the random workload."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from multistore.core import Resolver
from multistore.replication._changelog import Change
from multistore.replication._multimaster import MultiMasterNode
from multistore.replication._replicator import Replicator


class ManualClock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: int = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def wall_ms(offset: int = 0) -> Callable[[], int]:
    """The real wall clock shifted by ``offset`` ms (an injected skewed clock)."""
    return lambda: time.time_ns() // 1_000_000 + offset


@asynccontextmanager
async def open_nodes(
    urls: dict[str, str], resolver: Resolver, **options: Any
) -> AsyncIterator[list[MultiMasterNode]]:
    """Open one node per ``{node_id: url}`` and close them all at the end."""
    nodes: list[MultiMasterNode] = []
    try:
        for node_id, url in urls.items():
            extra = options.get(node_id, {})
            nodes.append(await MultiMasterNode.open(url, node_id, resolver=resolver, **extra))
        yield nodes
    finally:
        for node in nodes:
            await node.close()


Write = Callable[[MultiMasterNode, str, random.Random], Awaitable[tuple[Change, Any]]]


async def concurrent_workload(
    nodes: Sequence[MultiMasterNode],
    replicator: Replicator,
    write: Write,
    *,
    keys: Sequence[str],
    writes_per_node: int,
    seed: int,
) -> list[tuple[Change, Any]]:
    """Each node writes ``writes_per_node`` times to random overlapping keys while the
    replicator runs rounds concurrently; returns every (change, value written)."""
    log: list[tuple[Change, Any]] = []
    done = asyncio.Event()

    async def writer(node: MultiMasterNode, rng: random.Random) -> None:
        for _ in range(writes_per_node):
            log.append(await write(node, rng.choice(keys), rng))
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(0)

    async def replicate() -> None:
        while not done.is_set():
            await replicator.round()
            await asyncio.sleep(0)

    async def writers() -> None:
        await asyncio.gather(
            *(writer(node, random.Random(seed * 100 + i)) for i, node in enumerate(nodes))
        )
        done.set()

    await asyncio.gather(writers(), replicate())
    return log


async def assert_converged(nodes: Sequence[MultiMasterNode]) -> dict[str, tuple[Any, ...]]:
    """Every node holds the same stored state and shows the same values; return the values."""
    exports = [await node.export() for node in nodes]
    snapshots = [await node.snapshot() for node in nodes]
    for node, export, snapshot in zip(nodes[1:], exports[1:], snapshots[1:], strict=True):
        assert snapshot == snapshots[0], f"{node.node_id} differs from {nodes[0].node_id}"
        assert export == exports[0], f"{node.node_id}'s stored state differs"
    return snapshots[0]
