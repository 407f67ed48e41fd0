"""Multi-master nodes on embedded SQLite files: the change log, re-delivery, restarts,
the skew guard, the strategies' trade-offs, status and the demo."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from multistore.core import (
    LWW,
    Cart,
    CRDTResolver,
    HLCTimestamp,
    KeepSiblings,
    MergeFunction,
    VersionVector,
    merge_carts,
)
from multistore.errors import ConflictError, StoreTimeoutError, UsageError
from multistore.replication._mm_report import multimaster_status
from multistore.replication._multimaster import MultiMasterNode
from multistore.replication._replicator import Faults, MemoryTransport, Replicator
from tests.replication.mm_helpers import ManualClock, assert_converged, open_nodes

MINUTE = 60_000


def sqlite_urls(tmp_path: Path, *ids: str) -> dict[str, str]:
    return {node_id: f"sqlite:///{tmp_path}/{node_id}.db" for node_id in ids}


def test_local_write_logs_the_change_in_the_same_transaction(tmp_path: Path) -> None:
    async def body() -> None:
        async with open_nodes(sqlite_urls(tmp_path, "a"), LWW()) as [a]:
            first = await a.put("cart:1", {"items": {"apple": 1}})
            second = await a.put("cart:1", {"items": {"apple": 2}})
            assert (first.seq, second.seq) == (1, 2)
            assert second.hlc > first.hlc
            assert second.version.vv.to_dict() == {"a": 2}
            changes, upto = await a.changes_after(0)
            assert [c.to_dict() for c in changes] == [first.to_dict(), second.to_dict()]
            assert upto == a.head == 2
            assert await a.get("cart:1") == {"items": {"apple": 2}}
            # a value JSON cannot hold is refused before anything is written
            with pytest.raises(UsageError):
                await a.put("cart:1", {"bad": float("nan")})
            assert a.head == 2
            assert await a.get("cart:1") == {"items": {"apple": 2}}

    asyncio.run(body())


def test_redelivery_and_out_of_order_batches_apply_once(tmp_path: Path) -> None:
    async def body() -> None:
        async with open_nodes(sqlite_urls(tmp_path, "a", "b"), LWW()) as [a, b]:
            for i in range(8):
                await a.put(f"k{i % 3}", i)
            changes, upto = await a.changes_after(0)
            assert upto == 8
            # changes ahead of a gap are skipped, not applied out of order: they come again
            assert await b.apply_batch("a", changes[5:]) == VersionVector()
            assert b.statistics().deferred == 3
            assert await b.apply_batch("a", changes[:5]) == VersionVector({"a": 5})
            # re-delivery of everything: nothing applied twice
            assert await b.apply_batch("a", changes + changes) == VersionVector({"a": 8})
            stats = b.statistics()
            assert (stats.applied, stats.duplicates) == (8, 13)
            assert await b.export() == await a.export()
            assert b.head == 8
            # the wire form is taken as well, and a peer's own changes never come back
            wire = [change.to_dict() for change in changes]
            assert await b.apply_batch("a", wire) == VersionVector({"a": 8})
            assert b.statistics().applied == 8

    asyncio.run(body())


def test_lww_loses_a_concurrent_cart_edit_that_the_merge_keeps(tmp_path: Path) -> None:
    """The trade-off, both sides asserted: LWW keeps only the later edit (and records the
    lost one as a conflict); the cart merge keeps every item."""

    async def scenario(name: str, resolver: Any) -> tuple[Any, Any, list[Any]]:
        clocks = {"a": ManualClock(1_000_000), "b": ManualClock(1_000_000)}
        urls = {n: f"sqlite:///{tmp_path}/{name}-{n}.db" for n in clocks}
        options = {n: {"now_ms": clock} for n, clock in clocks.items()}
        transport = MemoryTransport()
        async with open_nodes(urls, resolver, **options) as [a, b]:
            replicator = Replicator([a, b], transport)
            await a.put("cart", {"items": {"apple": 1}})
            await replicator.sync()
            transport.partition(["a"], ["b"])
            clocks["a"].now += 10
            await a.put("cart", {"items": {"apple": 1, "pear": 2}})
            clocks["b"].now += 20  # b edits later in real time: LWW picks b
            await b.put("cart", {"items": {"apple": 3, "milk": 1}})
            transport.heal()
            await replicator.sync()
            values = await assert_converged([a, b])
            return values["cart"], await a.conflicts("cart"), await b.conflicts("cart")

    async def body() -> None:
        lww, a_conflicts, b_conflicts = await scenario("lww", LWW())
        assert lww == ({"items": {"apple": 3, "milk": 1}},)  # the pear is gone
        # a saw the remote edit win over its own; b saw a's edit lose
        assert [c.kind for c in a_conflicts] == ["lost"]
        assert [c.kind for c in b_conflicts] == ["lost"]
        for record in a_conflicts + b_conflicts:
            assert [loser.value for loser in record.losers] == [{"items": {"apple": 1, "pear": 2}}]
            assert record.values == ({"items": {"apple": 3, "milk": 1}},)

        merged, a_conflicts, _ = await scenario("merge", MergeFunction(merge_carts))
        assert merged == ({"items": {"apple": 3, "milk": 1, "pear": 2}},)
        assert [c.kind for c in a_conflicts] == ["merged"]
        assert a_conflicts[0].losers == ()

    asyncio.run(body())


def test_sibling_limit_keeps_the_newest_and_records_the_dropped(tmp_path: Path) -> None:
    async def body() -> None:
        clock = ManualClock(5_000_000)
        urls = sqlite_urls(tmp_path, "a", "b", "c")
        options = {n: {"now_ms": clock} for n in urls}
        transport = MemoryTransport()
        async with open_nodes(urls, KeepSiblings(limit=2), **options) as nodes:
            a, b, c = nodes
            replicator = Replicator(nodes, transport)
            transport.partition(["a"], ["b"], ["c"])
            for node, value in ((a, "from-a"), (b, "from-b"), (c, "from-c")):
                clock.now += 5
                await node.put("k", value)
            transport.heal()
            await replicator.sync()
            values = await assert_converged(nodes)
            assert values["k"] == ("from-b", "from-c")  # the newest two, oldest first
            with pytest.raises(UsageError):
                await a.get("k")
            records = [r for node in nodes for r in await node.conflicts("k")]
            dropped = {loser.value for r in records for loser in r.losers}
            assert dropped == {"from-a"}
            # the application resolves the siblings with a write: it supersedes them everywhere
            await b.put("k", "resolved")
            await replicator.sync()
            values = await assert_converged(nodes)
            assert values["k"] == ("resolved",)

    asyncio.run(body())


def test_crdt_cart_under_faults_keeps_every_add(tmp_path: Path) -> None:
    async def body() -> None:
        transport = MemoryTransport(
            Faults(drop=0.2, duplicate=0.3, max_delay=2, reorder=True), seed=7
        )
        async with open_nodes(sqlite_urls(tmp_path, "a", "b"), CRDTResolver()) as nodes:
            a, b = nodes
            replicator = Replicator(nodes, transport)
            expected: dict[str, int] = {}
            for i in range(20):
                node, item, qty = (a, b)[i % 2], f"sku-{i % 5}", i % 3 + 1

                def add(cart: Cart, it: str = item, q: int = qty) -> Cart:
                    return cart.add(it, q)

                await node.update("cart", add, Cart)
                expected[item] = expected.get(item, 0) + qty
                await replicator.round()
            await replicator.sync()
            values = await assert_converged(nodes)
            assert values["cart"] == (expected,)
            assert transport.duplicated > 0 and transport.dropped > 0

    asyncio.run(body())


def test_restart_resumes_from_what_the_node_has(tmp_path: Path) -> None:
    async def body() -> None:
        urls = sqlite_urls(tmp_path, "a", "b")
        a = await MultiMasterNode.open(urls["a"], "a", resolver=LWW())
        try:
            b = await MultiMasterNode.open(urls["b"], "b", resolver=LWW())
            for i in range(5):
                await a.put(f"k{i}", i)
            await b.put("mine", "b")
            await Replicator([a, b]).sync()
            assert b.received == VersionVector({"a": 5, "b": 1})
            last = b.clock.last
            await b.close()

            for i in range(5, 8):
                await a.put(f"k{i}", i)
            with pytest.raises(ConflictError):
                await MultiMasterNode.open(urls["b"], "not-b", resolver=LWW())
            b = await MultiMasterNode.open(urls["b"], "b", resolver=LWW())
            try:
                # persisted with the applied changes, though the logs were trimmed
                assert b.received == VersionVector({"a": 5, "b": 1})
                assert b.peer_has("a").get_count("a") == 5
                assert b.clock.last is not None and last is not None
                assert b.clock.last >= last  # the clock was restored
                transport = MemoryTransport(record=True)
                await Replicator([a, b], transport, push=False).sync()
                pulls = [
                    json.loads(e.payload)
                    for e in transport.sent
                    if e.sender == "b" and json.loads(e.payload)["type"] == "pull"
                ]
                assert pulls[0]["have"] == {"a": 5, "b": 1}
                stats = b.statistics()
                assert (stats.applied, stats.duplicates) == (3, 0)  # only the new ones
                assert await b.snapshot() == await a.snapshot()
                assert len(await b.snapshot()) == 9
                # b writes again after the restart: numbering goes on, nothing reused
                change = await b.put("mine", "b again")
                assert change.seq == 2
            finally:
                await b.close()
        finally:
            await a.close()

    asyncio.run(body())


def test_clock_is_monotonic_across_a_restart_with_a_wall_clock_that_went_back(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        url = f"sqlite:///{tmp_path}/a.db"
        async with open_nodes({"a": url}, LWW(), a={"now_ms": ManualClock(9_000_000)}) as [a]:
            before = await a.put("k", 1)
        async with open_nodes({"a": url}, LWW(), a={"now_ms": ManualClock(1_000)}) as [a]:
            after = await a.put("k", 2)
            assert after.hlc > before.hlc
            assert after.seq == 2
            assert after.version.vv.to_dict() == {"a": 2}

    asyncio.run(body())


def test_skew_guard_holds_back_a_clock_ten_minutes_ahead(tmp_path: Path) -> None:
    async def scenario(name: str, max_skew_ms: int) -> tuple[list[Any], list[Any], Any]:
        urls = {n: f"sqlite:///{tmp_path}/{name}-{n}.db" for n in ("a", "b", "c")}
        honest = ManualClock()

        def ahead() -> int:
            return honest.now + 10 * MINUTE  # c's clock runs ten minutes ahead

        options = {
            "a": {"now_ms": honest, "max_skew_ms": max_skew_ms},
            "b": {"now_ms": honest, "max_skew_ms": max_skew_ms},
            "c": {"now_ms": ahead, "max_skew_ms": max_skew_ms},
        }
        async with open_nodes(urls, LWW(), **options) as nodes:
            a, b, c = nodes
            replicator = Replicator(nodes)
            await c.put("price", "from-c")
            honest.now += 1_000
            await a.put("price", "from-a")  # a second later in real time
            try:
                await replicator.sync(max_rounds=20)
            except StoreTimeoutError as exc:
                assert "holds back" in str(exc)
                assert not replicator.caught_up()
            seen = [await node.values("price") for node in nodes]
            rejected = [r for node in (a, b) for r in await node.rejected()]
            # once the honest clocks reach c's stamps (less the allowed skew), the held
            # change is applied: kept, not lost, and replication catches up
            honest.now += 10 * MINUTE
            await replicator.sync()
            final = await assert_converged(nodes)
            return seen, rejected, final["price"]

    async def body() -> None:
        # without a guard (a day of skew allowed) the fast clock wins at once
        seen, rejected, final = await scenario("unguarded", 24 * 60 * MINUTE)
        assert seen == [("from-c",)] * 3
        assert rejected == []
        assert final == ("from-c",)

        # with the guard (one minute), the honest nodes hold c's change back meanwhile
        seen, rejected, final = await scenario("guarded", MINUTE)
        assert seen[:2] == [("from-a",)] * 2
        assert sorted((r.change.origin, r.change.seq) for r in rejected) == [("c", 1), ("c", 1)]
        assert all(r.skew_ms > 9 * MINUTE for r in rejected)
        assert final == ("from-c",)  # its stamp is the greatest: applied late, it still wins

    asyncio.run(body())


def test_sync_reports_a_partition_that_never_heals(tmp_path: Path) -> None:
    async def body() -> None:
        transport = MemoryTransport()
        async with open_nodes(sqlite_urls(tmp_path, "a", "b"), LWW()) as nodes:
            transport.partition(["a"], ["b"])
            await nodes[0].put("k", 1)
            with pytest.raises(StoreTimeoutError, match="b has a:0/1"):
                await Replicator(nodes, transport).sync(max_rounds=5)
            assert await nodes[1].values("k") == ()

    asyncio.run(body())


def test_status_shows_what_each_node_has_and_conflicts(tmp_path: Path) -> None:
    async def body() -> None:
        transport = MemoryTransport()
        async with open_nodes(sqlite_urls(tmp_path, "a", "b"), LWW()) as nodes:
            a, b = nodes
            replicator = Replicator(nodes, transport)
            transport.partition(["a"], ["b"])
            await a.put("k", "a")
            await b.put("k", "b")
            await a.put("only-a", 1)
            status = await multimaster_status(nodes)
            assert status["nodes"]["a"]["peers"]["b"]["missing"] == 2
            assert status["nodes"]["a"]["log_rows"] == 2
            transport.heal()
            await replicator.sync()
            await replicator.round()  # the last acknowledgements arrive
            status = await multimaster_status(nodes)
            json.dumps(status)  # JSON-safe, for `multistore status --json`
            node_a, node_b = status["nodes"]["a"], status["nodes"]["b"]
            assert node_a["has"] == node_b["has"] == {"a": 2, "b": 1}
            assert node_a["own_changes"] == 2 and node_b["own_changes"] == 1
            assert node_b["peers"]["a"] == {"has": {"a": 2, "b": 1}, "missing": 0}
            assert node_a["log_rows"] == node_b["log_rows"] == 0  # every peer has everything
            assert node_a["conflicts"] == 1 and node_b["conflicts"] == 1
            assert node_a["backend"] == "sqlite"

    asyncio.run(body())


def test_put_and_update_check_the_mode(tmp_path: Path) -> None:
    async def body() -> None:
        async with open_nodes(sqlite_urls(tmp_path, "a"), CRDTResolver()) as [a]:
            with pytest.raises(UsageError):
                await a.put("k", 1)
        async with open_nodes(sqlite_urls(tmp_path, "b"), LWW()) as [b]:
            with pytest.raises(UsageError):
                await b.update("k", lambda cart: cart.add("x"), Cart)

    asyncio.run(body())


def test_hlc_text_round_trip_in_changes(tmp_path: Path) -> None:
    async def body() -> None:
        async with open_nodes(sqlite_urls(tmp_path, "a"), LWW()) as [a]:
            change = await a.put("k", "v")
            (stored,), _ = await a.changes_after(0)
            assert stored.hlc == change.hlc
            assert isinstance(HLCTimestamp.parse(str(stored.hlc)), HLCTimestamp)

    asyncio.run(body())
