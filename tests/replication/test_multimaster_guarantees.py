"""What multi-master replication promises, each shown on embedded SQLite nodes: no lost
update from concurrent read-modify-writes on one node, deletes with a causal context, a
change that cannot be applied never blocks the stream, held-back changes are kept and
retried, each change travels to each peer once, and the log is trimmed."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest

from multistore.core import (
    DELETED,
    LWW,
    Cart,
    CRDTResolver,
    GCounter,
    KeepSiblings,
    MergeFunction,
    Resolver,
    Tombstone,
    VersionVector,
    merge_carts,
)
from multistore.errors import StoreTimeoutError
from multistore.replication._changelog import Change, is_stub
from multistore.replication._multimaster import MultiMasterNode
from multistore.replication._replicator import Faults, MemoryTransport, Replicator
from tests.replication.mm_helpers import (
    ManualClock,
    assert_converged,
    concurrent_workload,
    open_nodes,
)

MINUTE = 60_000


def urls_for(tmp_path: Path, name: str, *ids: str) -> dict[str, str]:
    return {node_id: f"sqlite:///{tmp_path}/{name}-{node_id}.db" for node_id in ids}


def union(a: Any, b: Any) -> Any:
    """A merge of lists of words: their union, sorted (a delete counts as empty)."""
    return sorted(set([] if a is DELETED else a) | set([] if b is DELETED else b))


async def log_rows(node: MultiMasterNode) -> int:
    return int(await node.store.fetch_val("SELECT COUNT(*) FROM mm_log"))


# -- #14: concurrent read-modify-writes on one node ------------------------------------

RMW_CASES: dict[str, tuple[Resolver, Any, Any, str]] = {
    # strategy: (resolver, value written by client n, what every node shows, conflict kind)
    "siblings": (KeepSiblings(), lambda n: f"x{n}", ("x1", "x2"), "siblings"),
    "merge": (MergeFunction(union), lambda n: ["base", f"x{n}"], (["base", "x1", "x2"],), "merged"),
    "lww": (LWW(), lambda n: f"x{n}", ("x2",), "lost"),
}


@pytest.mark.parametrize("strategy", list(RMW_CASES))
def test_concurrent_read_modify_writes_on_one_node_lose_no_update(
    strategy: str, tmp_path: Path
) -> None:
    resolver, written, shown, kind = RMW_CASES[strategy]
    base = ["base"] if strategy == "merge" else "base"

    async def body() -> None:
        async with open_nodes(urls_for(tmp_path, strategy, "a", "b"), resolver) as nodes:
            a, b = nodes
            replicator = Replicator(nodes)
            await a.put("doc", base)
            await replicator.sync()
            # two clients read the same state on a, then each writes based on its read
            first, second = await a.read_with_context("doc"), await a.read_with_context("doc")
            await a.put("doc", written(1), context=first.context)
            await a.put("doc", written(2), context=second.context)
            assert await a.values("doc") == shown
            await replicator.sync()
            assert await b.values("doc") == shown
            await assert_converged(nodes)
            for node in nodes:  # both nodes saw the concurrent writes meet, and say so
                records = await node.conflicts("doc")
                assert [r.kind for r in records] == [kind]
                if strategy == "lww":
                    assert [loser.value for loser in records[0].losers] == ["x1"]
            # a write based on a read replaces exactly what the read saw: b's write, which
            # arrives after the read, survives beside it
            read = await a.read_with_context("doc")
            await b.put("doc", written(3))
            await replicator.sync()
            await a.put("doc", written(4), context=read.context)
            await replicator.sync()
            values = await assert_converged(nodes)
            if strategy == "siblings":
                assert values["doc"] == ("x3", "x4")
            elif strategy == "merge":
                assert values["doc"] == (["base", "x3", "x4"],)
            else:
                assert values["doc"] == ("x4",)

    asyncio.run(body())


def test_random_writes_and_deletes_under_faults_keep_exactly_what_no_write_superseded(
    tmp_path: Path,
) -> None:
    """Three nodes read-modify-write, blind-write and delete overlapping keys while the
    network drops, duplicates, delays and reorders, one node cut off for a while. In the
    end every node shows, per key, exactly the written values whose event no other
    write's context covered — computed here from the changes alone."""

    async def write(node: MultiMasterNode, key: str, rng: random.Random) -> tuple[Change, Any]:
        read = await node.read_with_context(key)
        await asyncio.sleep(0)  # let the replicator run between the read and the write
        choice = rng.random()
        if choice < 0.2:
            return await node.delete(key, context=read.context), None
        value = f"{node.node_id}-{rng.randrange(10**6)}"
        if choice < 0.4:
            return await node.put(key, value), value  # blind
        return await node.put(key, value, context=read.context), value

    async def body() -> None:
        transport = MemoryTransport(Faults(drop=0.2, duplicate=0.3, max_delay=3, reorder=True))
        urls = urls_for(tmp_path, "random", "a", "b", "c")
        async with open_nodes(urls, KeepSiblings()) as nodes:
            replicator = Replicator(nodes, transport, batch_size=7)
            transport.partition(["a", "b"], ["c"])
            log = await concurrent_workload(
                nodes, replicator, write, keys=["k1", "k2", "k3"], writes_per_node=25, seed=5
            )
            transport.heal()
            await replicator.sync(max_rounds=400)
            values = await assert_converged(nodes)
            expected: dict[str, tuple[Any, ...]] = {}
            versions = [change.version for change, _ in log]
            for key in ("k1", "k2", "k3"):
                mine = [c.version for c, _ in log if c.key == key]
                kept = [v for v in mine if not any(o.dvv.context.contains(v.dot) for o in mine)]
                live = tuple(v.value for v in sorted(kept, key=lambda v: v.sort_key()))
                live = tuple(value for value in live if value is not DELETED)
                if live:
                    expected[key] = live
            assert values == expected
            assert len(versions) == 75 and any(v.deleted for v in versions)
            assert sum(node.statistics().conflicts for node in nodes) > 0

    asyncio.run(body())


# -- #15: deletes, and changes that cannot be applied ------------------------------------


def test_a_merge_function_that_raises_does_not_wedge_replication(tmp_path: Path) -> None:
    """A value the merge function refuses (here None, which merge_carts cannot read) meets a
    concurrent edit: both nodes keep the two siblings, record why, and go on replicating."""

    async def body() -> None:
        transport = MemoryTransport()
        urls = urls_for(tmp_path, "raise", "a", "b")
        async with open_nodes(urls, MergeFunction(merge_carts)) as nodes:
            a, b = nodes
            replicator = Replicator(nodes, transport)
            await a.put("cart", {"items": {"apple": 1}})
            await replicator.sync()
            transport.partition(["a"], ["b"])
            await a.put("cart", None)
            await b.put("cart", {"items": {"apple": 1, "pear": 1}})
            await a.put("other", "arrives")
            transport.heal()
            await replicator.sync(max_rounds=50)
            assert await b.get("other") == "arrives"
            values = await assert_converged(nodes)
            assert values["cart"] == (None, {"items": {"apple": 1, "pear": 1}})
            for node in nodes:
                (record,) = await node.conflicts("cart")
                assert record.kind == "unresolved"
                assert record.error is not None and "cart" in record.error
            # the application resolves it with a write based on what it read
            read = await b.read_with_context("cart")
            await b.put("cart", {"items": {"pear": 1}}, context=read.context)
            await replicator.sync()
            values = await assert_converged(nodes)
            assert values["cart"] == ({"items": {"pear": 1}},)

    asyncio.run(body())


def test_deletes_carry_a_causal_context(tmp_path: Path) -> None:
    seen: list[tuple[Any, Any]] = []

    def delete_wins(x: Any, y: Any) -> Any:
        seen.append((x, y))
        return DELETED if DELETED in (x, y) else union(x, y)

    async def concurrent(name: str, resolver: Resolver, later: str) -> tuple[Any, Any, Any]:
        """A deletes the cart while b edits it; ``later`` says whose clock is ahead."""
        clocks = {"a": ManualClock(1_000_000), "b": ManualClock(1_000_000)}
        options = {n: {"now_ms": clock} for n, clock in clocks.items()}
        transport = MemoryTransport()
        async with open_nodes(urls_for(tmp_path, name, "a", "b"), resolver, **options) as nodes:
            a, b = nodes
            replicator = Replicator(nodes, transport)
            await a.put("cart", {"items": {"apple": 1}})
            await replicator.sync()
            transport.partition(["a"], ["b"])
            clocks["b" if later == "a" else "a"].now += 10
            clocks[later].now += 20
            await a.delete("cart", context=(await a.read_with_context("cart")).context)
            await b.put("cart", {"items": {"apple": 1, "pear": 2}})
            transport.heal()
            await replicator.sync()
            values = await assert_converged(nodes)
            read = await a.read_with_context("cart")
            return values.get("cart", ()), read, await a.conflicts("cart")

    async def body() -> None:
        edit = {"items": {"apple": 1, "pear": 2}}
        # the cart merge sees the delete as an empty cart: the concurrent edit survives
        values, read, conflicts = await concurrent("merge", MergeFunction(merge_carts), "a")
        assert values == (edit,) and not read.deleted
        assert [c.kind for c in conflicts] == ["merged"]
        # a merge function of the application sees DELETED and may keep the key deleted
        values, read, _ = await concurrent("delete-wins", MergeFunction(delete_wins), "b")
        assert values == () and read.values == ()
        assert seen and all(x is DELETED and y == edit for x, y in seen)
        # LWW: the later of the two wins, the other is recorded as lost
        values, _, conflicts = await concurrent("lww-delete", LWW(), "a")
        assert values == ()
        assert [loser.value for loser in conflicts[0].losers] == [edit]
        values, _, conflicts = await concurrent("lww-edit", LWW(), "b")
        assert values == (edit,)
        assert [loser.deleted for loser in conflicts[0].losers] == [True]
        # siblings: the edit is shown and the read says a delete stands beside it
        values, read, _ = await concurrent("siblings", KeepSiblings(), "a")
        assert values == (edit,) and read.deleted and read.values == (edit,)

    asyncio.run(body())


def test_a_delete_supersedes_what_it_saw_everywhere(tmp_path: Path) -> None:
    async def body() -> None:
        async with open_nodes(urls_for(tmp_path, "seq", "a", "b"), LWW()) as nodes:
            a, b = nodes
            replicator = Replicator(nodes)
            await a.put("k", 1)
            await a.put("kept", 2)
            await replicator.sync()
            change = await b.delete("k")
            assert change.version.deleted and isinstance(change.version.value, Tombstone)
            await replicator.sync()
            for node in nodes:
                assert await node.get("k") is None
                assert await node.values("k") == ()
                assert await node.snapshot() == {"kept": (2,)}
            exports = await assert_converged(nodes)
            assert "k" not in exports
            assert (await a.export())["k"]["versions"][0]["deleted"] is True  # the tombstone
            # a write after the delete brings the key back, as any later write would
            await a.put("k", 3)
            await replicator.sync()
            assert await b.get("k") == 3
            assert await b.conflicts() == []  # nothing here was concurrent

    asyncio.run(body())


def test_a_change_that_cannot_be_applied_is_set_aside(tmp_path: Path) -> None:
    """Two nodes make the same key a different CRDT: neither change can be applied on the
    other node. Each is set aside with a conflict record, and an unrelated key arrives."""

    async def body() -> None:
        transport = MemoryTransport()
        async with open_nodes(urls_for(tmp_path, "clash", "a", "b"), CRDTResolver()) as nodes:
            a, b = nodes
            replicator = Replicator(nodes, transport)
            transport.partition(["a"], ["b"])
            await a.update("k", lambda cart: cart.add("apple"), Cart)
            await b.update("k", lambda counter: counter.increment(5), GCounter)
            await a.update("other", lambda cart: cart.add("pear", 2), Cart)
            transport.heal()
            await replicator.sync(max_rounds=50)
            assert await b.get("other") == {"pear": 2}
            assert await a.get("k") == {"apple": 1} and await b.get("k") == 5
            for node in nodes:
                (record,) = await node.conflicts("k")
                assert record.kind == "set_aside"
                assert record.error is not None and "cannot merge" in record.error
                assert node.statistics().set_aside == 1

    asyncio.run(body())


def test_an_undecodable_change_is_set_aside_and_the_next_one_applies(tmp_path: Path) -> None:
    async def body() -> None:
        async with open_nodes(urls_for(tmp_path, "bad", "a", "b"), LWW()) as [a, b]:
            await a.put("k", 1)
            await a.put("other", 2)
            changes, _ = await a.changes_after(0)
            broken = changes[0].to_dict()
            broken["version"] = {"value": 1, "hlc": "not a timestamp", "vv": {}, "origin": "a"}
            have = await b.apply_batch("a", [broken, changes[1].to_dict()])
            assert have.get_count("a") == 2
            assert await b.get("other") == 2 and await b.get("k") is None
            (record,) = await b.conflicts()
            assert (record.kind, record.origin, record.seq) == ("set_aside", "a", 1)
            assert record.error is not None and "timestamp" in record.error

    asyncio.run(body())


# -- #16: the skew guard keeps what it refuses -----------------------------------------


def test_a_crdt_change_held_by_the_skew_guard_is_kept_and_retried(tmp_path: Path) -> None:
    async def body() -> None:
        honest = ManualClock()

        def ahead() -> int:
            return honest.now + 10 * MINUTE  # c's clock runs ten minutes ahead

        options = {
            "a": {"now_ms": honest, "max_skew_ms": MINUTE},
            "c": {"now_ms": ahead, "max_skew_ms": MINUTE},
        }
        urls = urls_for(tmp_path, "skew", "a", "c")
        async with open_nodes(urls, CRDTResolver(), **options) as nodes:
            a, c = nodes
            replicator = Replicator(nodes)
            await a.update("cart", lambda cart: cart.add("apple"), Cart)
            await c.update("cart", lambda cart: cart.add("pear", 2), Cart)
            with pytest.raises(StoreTimeoutError, match="a holds back 1"):
                await replicator.sync(max_rounds=10)
            assert not replicator.caught_up()
            assert await a.get("cart") == {"apple": 1}
            assert await c.get("cart") == {"apple": 1, "pear": 2}
            # a later change of c to the cart waits behind the held one (its own stamp is
            # not even checked yet); a change to another key is judged on its own
            await c.update("cart", lambda cart: cart.add("milk"), Cart)
            await c.update("visits", lambda counter: counter.increment(), GCounter)
            with pytest.raises(StoreTimeoutError, match="a holds back 3"):
                await replicator.sync(max_rounds=10)
            held = [(r.change.seq, r.change.key, r.skew_ms > 0) for r in await a.rejected()]
            assert held == [(1, "cart", True), (2, "cart", False), (3, "visits", True)]
            honest.now += 10 * MINUTE  # a's clock reaches c's stamps: all pass, in order
            await replicator.sync()
            assert replicator.caught_up()
            values = await assert_converged(nodes)
            assert values["cart"] == ({"apple": 1, "milk": 1, "pear": 2},)
            assert values["visits"] == (1,)
            assert await a.rejected() == []

    asyncio.run(body())


def test_held_changes_survive_a_restart(tmp_path: Path) -> None:
    async def body() -> None:
        honest = ManualClock()
        urls = urls_for(tmp_path, "held", "a", "c")

        def ahead() -> int:
            return honest.now + 10 * MINUTE

        c = await MultiMasterNode.open(urls["c"], "c", resolver=LWW(), now_ms=ahead)
        try:
            a = await MultiMasterNode.open(urls["a"], "a", resolver=LWW(), now_ms=honest)
            await c.put("k", "from-c")
            with pytest.raises(StoreTimeoutError):
                await Replicator([a, c]).sync(max_rounds=5)
            assert a.pending_count == 1
            await a.close()
            a = await MultiMasterNode.open(urls["a"], "a", resolver=LWW(), now_ms=honest)
            try:
                assert a.pending_count == 1 and a.received_from("c") == 1
                honest.now += 10 * MINUTE
                await Replicator([a, c]).sync()
                assert await a.get("k") == "from-c" and a.pending_count == 0
            finally:
                await a.close()
        finally:
            await c.close()

    asyncio.run(body())


# -- #17: each change to each peer once, and a bounded log ------------------------------


def changes_carried(transport: MemoryTransport) -> int:
    return sum(
        len(message["changes"])
        for message in (json.loads(e.payload) for e in transport.sent)
        if message["type"] == "batch"
    )


def test_each_change_travels_to_each_peer_once(tmp_path: Path) -> None:
    async def body() -> None:
        transport = MemoryTransport(record=True)
        urls = urls_for(tmp_path, "once", "a", "b", "c")
        async with open_nodes(urls, LWW()) as nodes:
            replicator = Replicator(nodes, transport)
            for step in range(30):
                for node in nodes:
                    await node.put(f"k{step % 7}", f"{node.node_id}{step}")
                if step % 3 == 0:
                    await replicator.round()
            await replicator.sync()
            await assert_converged(nodes)
            writes, peers = 90, 2
            assert changes_carried(transport) == writes * peers
            assert replicator.statistics().changes_sent == writes * peers

    asyncio.run(body())


def test_a_pair_cut_from_each_other_converges_through_a_third_node(tmp_path: Path) -> None:
    async def body() -> None:
        transport = MemoryTransport(record=True)
        urls = urls_for(tmp_path, "relay", "a", "b", "c")
        async with open_nodes(urls, LWW()) as nodes:
            a, _, c = nodes
            replicator = Replicator(nodes, transport)
            transport.partition(["a", "b"], ["b", "c"])  # a and c cannot talk
            for i in range(10):
                await a.put(f"a{i}", i)
                await c.put(f"c{i}", i)
            await replicator.sync()
            values = await assert_converged(nodes)
            assert len(values) == 20
            relayed = [
                json.loads(e.payload)
                for e in transport.sent
                if e.sender == "b" and json.loads(e.payload)["type"] == "batch"
            ]
            origins = {change["origin"] for message in relayed for change in message["changes"]}
            assert origins == {"a", "c"}  # b carried each side's changes to the other

    asyncio.run(body())


def test_a_change_a_later_one_supersedes_travels_as_a_stub(tmp_path: Path) -> None:
    async def body() -> None:
        urls = urls_for(tmp_path, "stub", "a", "b")
        async with open_nodes(urls, KeepSiblings()) as [a, b]:
            await a.put("k", 1)
            read = await a.read_with_context("k")
            await a.put("k", 2)  # a blind write: covers 1
            await a.put("k", 3, context=read.context)  # based on the read of 1: not 2
            changes = await a.changes_for(VersionVector(), 10)
            assert [is_stub(change) for change in changes] == [True, False, False]
            assert await b.apply_batch("a", changes) == VersionVector({"a": 3})
            assert await b.values("k") == await a.values("k") == (2, 3)
            assert (b.statistics().applied, b.statistics().superseded) == (2, 1)
            assert await b.export() == await a.export()

    asyncio.run(body())


def test_the_log_is_trimmed_once_every_peer_has_a_change(tmp_path: Path) -> None:
    async def body() -> None:
        urls = urls_for(tmp_path, "trim", "a", "b", "c")
        async with open_nodes(urls, LWW()) as nodes:
            replicator = Replicator(nodes)
            most = 0
            for step in range(100):
                for node in nodes:
                    await node.put(f"k{step % 10}", step)
                await replicator.round()
                most = max([most] + [await log_rows(node) for node in nodes])
            await replicator.sync()
            await replicator.round()  # the last acknowledgements arrive
            assert [await log_rows(node) for node in nodes] == [0, 0, 0]
            assert most <= 30  # a few rounds' worth, never the 300 writes
            await assert_converged(nodes)

    asyncio.run(body())


def test_the_log_stays_bounded_over_100000_writes(tmp_path: Path) -> None:
    """A hot set of 1,000 keys rewritten 100 times, replicated every 10 rewrites: the log
    never holds more than what the peer has not acknowledged, and a change that a later
    one supersedes travels as a stub."""

    async def body() -> None:
        urls = urls_for(tmp_path, "bounded", "a", "b")
        async with open_nodes(urls, LWW()) as nodes:
            a, b = nodes
            replicator = Replicator(nodes, batch_size=10_000)
            most = 0
            for batch in range(100):
                await a.put_many({f"k{i}": batch for i in range(1000)})
                most = max(most, await log_rows(a), await log_rows(b))
                if batch % 10 == 9:
                    await replicator.sync()
                    await replicator.round()  # b's news reaches a: a trims
                    assert await log_rows(a) == await log_rows(b) == 0
            assert a.seq == 100_000 and b.received_from("a") == 100_000
            assert most == 10_000  # ten rewrites of the hot set, never more
            stats = b.statistics()
            assert (stats.applied, stats.superseded) == (10_000, 90_000)
            assert replicator.statistics().changes_sent == 100_000
            assert await b.get("k999") == 99
            await assert_converged(nodes)

    asyncio.run(body())
