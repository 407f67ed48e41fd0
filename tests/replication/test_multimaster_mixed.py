"""Three real nodes — two SQLite files and a PostgreSQL database — with random concurrent
writes on overlapping keys over a network that delays, duplicates, reorders and drops
messages, one node partitioned and healed. All nodes must end identical, and equal to what
the strategy defines, computed here independently of the resolvers."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from multistore.core import LWW, Cart, CRDTResolver, MergeFunction, Resolver, merge_carts
from multistore.replication._changelog import Change
from multistore.replication._multimaster import MultiMasterNode
from multistore.replication._replicator import Faults, MemoryTransport, Replicator
from tests.replication.mm_helpers import assert_converged, concurrent_workload, open_nodes

pytestmark = pytest.mark.server

KEYS = ["cart:1", "cart:2", "cart:3"]
ITEMS = [f"sku-{i}" for i in range(8)]
FAULTS = Faults(drop=0.15, duplicate=0.3, max_delay=3, reorder=True)


async def write_plain(node: MultiMasterNode, key: str, rng: random.Random) -> tuple[Change, Any]:
    """Read the node's current cart, add to one item, write it back based on that read."""
    read = await node.read_with_context(key)
    items = dict(read.values[0]["items"]) if read.values else {}
    await asyncio.sleep(0)  # let the replicator apply changes between read and write
    item = rng.choice(ITEMS)
    items[item] = items.get(item, 0) + rng.randint(1, 3)
    value = {"items": items}
    return await node.put(key, value, context=read.context), value


async def write_crdt(node: MultiMasterNode, key: str, rng: random.Random) -> tuple[Change, Any]:
    item, qty = rng.choice(ITEMS), rng.randint(1, 3)
    change = await node.update(key, lambda cart: cart.add(item, qty), Cart)
    return change, (item, qty)


def expected_lww(log: list[tuple[Change, Any]]) -> dict[str, tuple[Any, ...]]:
    """Per key, exactly the write with the greatest HLC."""
    best: dict[str, tuple[Change, Any]] = {}
    for change, value in log:
        if change.key not in best or change.hlc > best[change.key][0].hlc:
            best[change.key] = (change, value)
    return {key: (value,) for key, (_, value) in best.items()}


def expected_merge(log: list[tuple[Change, Any]]) -> dict[str, tuple[Any, ...]]:
    """Per key, every item ever written, at the largest quantity written for it."""
    carts: dict[str, dict[str, int]] = {}
    for change, value in log:
        cart = carts.setdefault(change.key, {})
        for item, qty in value["items"].items():
            cart[item] = max(cart.get(item, 0), qty)
    return {key: ({"items": dict(sorted(cart.items()))},) for key, cart in carts.items()}


def expected_crdt(log: list[tuple[Change, Any]]) -> dict[str, tuple[Any, ...]]:
    """Per key, the sum of every add of every item."""
    carts: dict[str, dict[str, int]] = {}
    for change, (item, qty) in log:
        cart = carts.setdefault(change.key, {})
        cart[item] = cart.get(item, 0) + qty
    return {key: (cart,) for key, cart in carts.items()}


STRATEGIES: dict[str, tuple[Resolver, Any, Any]] = {
    "lww": (LWW(), write_plain, expected_lww),
    "merge": (MergeFunction(merge_carts), write_plain, expected_merge),
    "crdt": (CRDTResolver(), write_crdt, expected_crdt),
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_three_mixed_nodes_converge_to_what_the_strategy_defines(
    strategy: str, tmp_path: Path, postgres_url: str
) -> None:
    resolver, write, expected = STRATEGIES[strategy]
    urls = {
        "a": f"sqlite:///{tmp_path}/a.db",
        "b": postgres_url,
        "c": f"sqlite:///{tmp_path}/c.db",
    }

    async def body() -> None:
        transport = MemoryTransport(FAULTS, seed=hash(strategy) % 1000)
        async with open_nodes(urls, resolver) as nodes:
            replicator = Replicator(nodes, transport, batch_size=25)
            # c is cut off while everyone writes, then the partition heals
            transport.partition(["a", "b"], ["c"])
            log = await concurrent_workload(
                nodes, replicator, write, keys=KEYS, writes_per_node=20, seed=11
            )
            for _ in range(5):
                await replicator.round()
            assert await nodes[2].snapshot() != await nodes[0].snapshot()  # really partitioned
            transport.heal()
            await replicator.sync(max_rounds=400)
            values = await assert_converged(nodes)
            assert values == expected(log)

            # the network really misbehaved and the nodes really met concurrent writes
            assert transport.duplicated > 0 and transport.dropped > 0
            stats = [node.statistics() for node in nodes]
            assert sum(s.duplicates for s in stats) > 0
            assert sum(s.conflicts for s in stats) > 0
            assert [s.local_writes for s in stats] == [20, 20, 20]
            # every remote change exactly once: applied, or superseded by a later one of its
            # origin and sent as a stub
            assert all(s.applied + s.superseded == 40 for s in stats)
            if strategy == "lww":
                lost = [r for node in nodes for r in await node.conflicts() if r.losers]
                assert lost  # LWW discarded concurrent writes, and says which

    asyncio.run(body())
