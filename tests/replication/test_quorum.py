"""Quorum replication on real nodes: embedded SQLite nodes and Redis servers (the
topologies of :mod:`tests.replication.quorum_helpers`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from multistore.core import KeepSiblings, MergeFunction, VersionVector
from multistore.core._quorum import Consistency, QuorumConfig
from multistore.core._ring import RING_SIZE
from multistore.errors import Outcome
from multistore.lab.servers import RedisServer, unique_name
from multistore.replication._antientropy import anti_entropy
from multistore.replication._qnodes import SQLiteNode
from multistore.replication._quorum import (
    QuorumCluster,
    QuorumError,
    WeakQuorumWarning,
    quorum_status,
)
from tests.replication.quorum_helpers import (
    N3,
    SLOPPY3,
    Topology,
    eventually,
    keys_homed_on,
    no_pending_hints,
    run,
)

# -- basics -----------------------------------------------------------------------------


def test_put_get_delete_and_versions(topo: Topology) -> None:
    async def body() -> None:
        c = await topo.cluster()
        first = await c.put("user:1", {"name": "Alice"})
        assert len(first.acks) >= 2 and first.hinted == ()
        got = await c.get("user:1")
        assert got.found and got.value == {"name": "Alice"}
        second = await c.put("user:1", {"name": "Alicia"}, context=got.context)
        assert second.version.hlc > first.version.hlc
        assert second.version.vv.dominates(first.version.vv)
        assert (await c.get("user:1", r=Consistency.ALL)).value == {"name": "Alicia"}
        await c.delete("user:1")
        gone = await c.get("user:1", r=3)
        assert not gone.found and gone.value is None
        assert not (await c.get("never-written")).found
        # every replica of the key holds the tombstone, not the old value
        for name in c.preference_list("user:1"):
            record = await c.node(name).read(b"user:1")
            assert record is not None and b'"d":1' in record[1]

    run(topo, body)


def test_weak_quorums_are_accepted_with_a_warning(tmp_path: Path) -> None:
    async def body() -> None:
        nodes = [await SQLiteNode(f"n{i}", tmp_path / f"n{i}.db").open() for i in range(3)]
        from multistore.replication._hints import HintStore

        with pytest.warns(WeakQuorumWarning, match="stale"):
            c = QuorumCluster(
                nodes, hints=await HintStore.open(None), config=QuorumConfig.preset("eventual")
            )
        await c.put("k", 1)  # it works, R=W=1
        assert (await c.get("k")).value == 1
        status = await quorum_status(c)
        assert status["overlapping"] is False and (status["r"], status["w"]) == (1, 1)
        assert status["sloppy"] is False and status["coordinator"] == c.node_id
        assert status["read_from"] == "random"
        await c.close()
        # the seed's "eventual" (W=1, R=N) overlaps: no warning (warnings are errors here)
        overlapping = QuorumCluster(
            [await SQLiteNode(f"m{i}", tmp_path / f"m{i}.db").open() for i in range(3)],
            hints=await HintStore.open(None),
            config=QuorumConfig.preset("write_one_read_all"),
        )
        await overlapping.close()

    asyncio.run(body())


# -- one node killed --------------------------------------------------------------------


def test_reads_see_the_latest_acknowledged_write_with_one_node_killed(topo: Topology) -> None:
    async def body() -> None:
        c = await topo.cluster()
        keys = [f"k{i}" for i in range(30)]
        for key in keys:
            await c.put(key, 0)
        for victim in ("node0", "node1"):
            topo.kill(victim)
            for round_ in range(1, 4):
                for key in keys:
                    value = f"{victim}-{round_}-{key}"
                    result = await c.put(key, value)
                    assert victim not in result.acks
                    got = await c.get(key)
                    assert got.value == value, f"stale read of {key} with {victim} down"
            topo.revive(victim)
            # back up: hints bring it up to date, then the next node goes down
            await eventually(lambda: no_pending_hints(c), f"hints delivered to {victim}", bound=20)
        for key in keys:
            assert (await c.get(key, r=Consistency.ALL)).value == f"node1-3-{key}"

    run(topo, body)


def test_too_few_replicas_is_a_quorum_error(topo: Topology) -> None:
    async def body() -> None:
        c = await topo.cluster(failure_threshold=1)
        await c.put("k", "before")
        topo.kill("node0")
        topo.kill("node1")
        with pytest.raises(QuorumError) as caught:
            await c.put("k", "after")
        assert caught.value.required == 2 and len(caught.value.acks) == 1
        assert caught.value.outcome is Outcome.INDETERMINATE  # node2 may keep it
        with pytest.raises(QuorumError):
            await c.get("k")
        assert (await c.get("k", r=Consistency.ONE)).found
        states = {n["name"]: n["state"] for n in (await quorum_status(c))["nodes"]}
        assert states == {"node0": "down", "node1": "down", "node2": "up"}
        topo.revive("node0")
        topo.revive("node1")

    run(topo, body)


def test_pw_counts_only_home_replicas(topo: Topology) -> None:
    async def body() -> None:
        c = await topo.cluster(m=4, config=SLOPPY3)
        key = keys_homed_on(c, "node1", 1)[0]
        topo.kill("node1")
        # a sloppy quorum: W=3 is met with a stand-in for node1
        sloppy = await c.put(key, "sloppy", w=3)
        assert len(sloppy.acks) == 3 and "node1" not in sloppy.acks
        # PW=3 needs three *home* replicas: the stand-in does not count
        with pytest.raises(QuorumError):
            await c.put(key, "strict", w=3, pw=3)
        assert (await c.get(key, pr=2)).found
        with pytest.raises(QuorumError):
            await c.get(key, r=2, pr=3)
        topo.revive("node1")

    run(topo, body)


# -- hinted handoff ---------------------------------------------------------------------


@pytest.mark.parametrize("sloppy", [False, True], ids=["strict", "sloppy"])
def test_hinted_handoff_delivers_writes_made_during_an_outage(topo: Topology, sloppy: bool) -> None:
    async def body() -> None:
        c = await topo.cluster(m=4, config=SLOPPY3 if sloppy else N3)
        keys = keys_homed_on(c, "node2", 20)
        topo.kill("node2")
        skipped = 0
        for key in keys:
            known_down = not c.detector.available("node2")
            result = await c.put(key, f"v-{key}")
            assert "node2" not in result.acks and len(result.acks) >= 2
            if known_down:  # skipped at once: a stand-in took the write, the hint is in
                assert result.hinted == ("node2",)
                skipped += 1
            # else node2's failure may come after W acks: then it is hinted in the background
        assert skipped > 0  # the detector marked node2 down during the outage
        await c.wait_background()
        # a stand-in holds copies meanwhile in a sloppy quorum only
        copies = [
            name
            for key in keys
            for name in set(c.nodes) - set(c.preference_list(key))
            if await c.node(name).read(key.encode()) is not None
        ]
        assert bool(copies) is sloppy
        assert (await quorum_status(c))["hints"]["pending_by_node"] == {"node2": len(keys)}
        # reads meanwhile see the writes (from the other homes and the stand-in)
        for key in keys:
            assert (await c.get(key)).value == f"v-{key}"
        topo.revive("node2")
        await eventually(lambda: no_pending_hints(c), "hints delivered")
        node2 = c.node("node2")
        for key in keys:
            record = await node2.read(key.encode())
            assert record is not None and f'"v-{key}"'.encode() in record[1]
        status = await quorum_status(c)
        assert status["hints"]["delivered"] == len(keys) and status["hints"]["dropped"] == 0
        # the stand-in's copies were handed back and removed
        for key in keys:
            for name in set(c.nodes) - set(c.preference_list(key)):
                assert await c.node(name).read(key.encode()) is None

    run(topo, body)


def test_hints_past_the_window_are_dropped_and_counted(topo: Topology) -> None:
    now = [1000.0]

    async def body() -> None:
        c = await topo.cluster(m=4, hint_window=60.0, clock=lambda: now[0], failure_threshold=1)
        old_keys = keys_homed_on(c, "node1", 6)
        topo.kill("node1")
        for key in old_keys[:3]:
            assert (await c.put(key, "old")).hinted == ("node1",)
        now[0] += 61  # the first hints are now older than the window
        for key in old_keys[3:]:
            # node1 has been down for longer than the window: no hint is kept
            assert (await c.put(key, "late")).hinted == ()
        status = await quorum_status(c)
        assert status["hints"]["recorded"] == 3 and status["hints"]["dropped"] == 3
        topo.revive("node1")
        now[0] += 2  # past the detector's probe delay
        await eventually(lambda: no_pending_hints(c), "old hints handled")
        status = await quorum_status(c)
        assert status["hints"]["delivered"] == 0 and status["hints"]["dropped"] == 6
        for key in old_keys:
            assert await c.node("node1").read(key.encode()) is None
        # anti-entropy repairs what the dropped hints would have carried
        report = await anti_entropy(c, "node1")
        assert report.keys_repaired >= len(old_keys)
        for key in old_keys:
            assert await c.node("node1").read(key.encode()) is not None

    run(topo, body)


def test_hints_survive_a_coordinator_restart(tmp_path: Path) -> None:
    async def body() -> None:
        first = await QuorumCluster.embedded(tmp_path, nodes=4, config=N3)
        keys = keys_homed_on(first, "node3", 5)
        node3 = first.node("node3")
        assert isinstance(node3, SQLiteNode)
        node3.set_down(True)
        for key in keys:
            assert (await first.put(key, key)).hinted == ("node3",)
        await first.close()
        second = await QuorumCluster.embedded(tmp_path, nodes=4, config=N3)  # node3 is up again
        try:
            assert await second.hints.counts() == {"node3": 5}
            assert await second.deliver_hints() == 5
            for key in keys:
                assert await second.node("node3").read(key.encode()) is not None
        finally:
            await second.close()

    asyncio.run(body())


# -- anti-entropy -----------------------------------------------------------------------


async def _all_entries(c: QuorumCluster, name: str) -> list[tuple[str, str]]:
    return await c.node(name).entries(0, RING_SIZE - 1)


def test_anti_entropy_repairs_a_wiped_node(topo: Topology) -> None:
    async def body() -> None:
        c = await topo.cluster()
        for i in range(300):
            await c.put(f"item:{i}", {"n": i, "pad": "x" * 50})
        await c.wait_background()
        reference = await _all_entries(c, "node0")
        assert len(reference) == 300 and await _all_entries(c, "node2") == reference
        await c.wipe_node("node1")
        assert await _all_entries(c, "node1") == []
        report = await anti_entropy(c, "node1")
        assert report.keys_repaired == 300 and report.pairs == 2
        assert await _all_entries(c, "node1") == reference  # same records, same digests
        again = await anti_entropy(c)
        assert again.keys_repaired == 0 and again.stream_bytes == 0 and again.entry_bytes == 0

    run(topo, body)


def test_anti_entropy_streams_bytes_in_proportion_to_the_difference(topo: Topology) -> None:
    async def body() -> None:
        c = await topo.cluster()
        total = 1500
        for i in range(total):
            await c.put(f"doc:{i}", "y" * 400)
        await c.wait_background()
        data_bytes = total * 400
        node1 = c.node("node1")
        streamed = {}
        for missing in (10, 100):
            for i in range(missing):
                await node1.remove(f"doc:{i}".encode())
            report = await anti_entropy(c, "node1", depth=12)
            assert report.keys_repaired == missing
            streamed[missing] = report.stream_bytes
        assert 7 < streamed[100] / streamed[10] < 13  # 10x the difference, ~10x the bytes
        record = await c.node("node0").read(b"doc:500")
        assert record is not None
        size = len(record[0]) + len(record[1])
        # each differing record is read once from a peer and written once to node1
        assert streamed[10] <= 3 * 10 * size
        assert streamed[10] < 0.05 * data_bytes  # far below the data size

    run(topo, body)


# -- speculative retry ------------------------------------------------------------------


@pytest.mark.server
def test_speculative_retry_gets_past_a_blackholed_node(
    redis_nodes: list[RedisServer], tcp_proxy: Callable[[str, int], Any]
) -> None:
    proxy = tcp_proxy("127.0.0.1", redis_nodes[0].port)

    async def body() -> None:
        urls = [f"redis://127.0.0.1:{proxy.port}/0"] + [s.url() for s in redis_nodes[1:3]]
        c = await QuorumCluster.redis(
            urls, prefix=unique_name("q") + ":", config=N3, timeout=3.0, speculative_after=0.05
        )
        try:
            keys = [f"s{i}" for i in range(10)]
            for key in keys:
                await c.put(key, key)
            proxy.blackhole()
            # a read that asks node0 among its first R=2 replicas retries once
            retried = 0
            for key in keys:
                before = c.stats.speculative_retries
                got = await c.get(key)
                assert got.value == key and "node0" not in got.replicas
                assert c.stats.speculative_retries - before in (0, 1)
                retried += c.stats.speculative_retries - before
            assert retried >= 1  # reads are spread: about two in three ask node0 first
            # the reads returned while node0's requests were still outstanding
            # (their timeouts had not fired: no failure was recorded yet)
            assert c.detector.view()[0]["failures"] == 0
            # writes need W=2 of 3 and do not wait for node0 either
            result = await c.put("s0", "new")
            assert set(result.acks) == {"node1", "node2"}
            proxy.restore()
        finally:
            await c.close()

    asyncio.run(body())


# -- siblings and resolvers -------------------------------------------------------------


def test_concurrent_writes_become_siblings_then_merge(tmp_path: Path) -> None:
    async def body() -> None:
        one = await QuorumCluster.embedded(
            tmp_path, nodes=3, config=N3, resolver=KeepSiblings(), node_id="c1"
        )
        other = QuorumCluster(
            [one.node(n) for n in one.nodes],
            hints=one.hints,
            config=N3,
            resolver=KeepSiblings(),
            node_id="c2",
        )
        await one.put("cart", {"items": {"apple": 1}})
        base = await one.get("cart")
        # two clients write concurrently, both based on the same read
        await one.put("cart", {"items": {"apple": 2}}, context=base.context)
        await other.put("cart", {"items": {"pear": 1}}, context=base.context)
        got = await one.get("cart")
        assert sorted(map(str, got.values)) == sorted(
            map(str, [{"items": {"apple": 2}}, {"items": {"pear": 1}}])
        )
        with pytest.raises(Exception, match="siblings"):
            _ = got.value
        # a write with the read's context supersedes both siblings
        await one.put("cart", {"items": {"apple": 2, "pear": 1}}, context=got.context)
        assert (await other.get("cart")).values == ({"items": {"apple": 2, "pear": 1}},)
        # a merge function resolves siblings on read instead
        merging = QuorumCluster(
            [one.node(n) for n in one.nodes],
            hints=one.hints,
            config=N3,
            resolver=MergeFunction(lambda a, b: {"items": {**a["items"], **b["items"]}}),
            node_id="c3",
        )
        await one.put("cart2", {"items": {"a": 1}}, context=VersionVector())
        await other.put("cart2", {"items": {"b": 1}}, context=VersionVector())
        assert (await merging.get("cart2")).value == {"items": {"a": 1, "b": 1}}
        await one.close()

    asyncio.run(body())


# -- read repair and status ---------------------------------------------------------------


def test_quorum_reads_repair_stale_replicas_before_returning(topo: Topology) -> None:
    async def body() -> None:
        c = await topo.cluster(speculative_after=None)
        key = "profile:9"
        await c.put(key, "v1", w=Consistency.ALL)  # every replica holds v1 first
        home = c.preference_list(key)
        stale = c.node(home[0])
        await stale.remove(key.encode())  # one replica lost the record
        got = await c.get(key, r=Consistency.ALL)
        assert got.value == "v1" and got.repaired == (home[0],)
        assert await stale.read(key.encode()) is not None  # repaired before get returned
        status = await quorum_status(c)
        assert status["read_repairs"] == 1
        assert [n["name"] for n in status["nodes"]] == ["node0", "node1", "node2"]
        assert {n["state"] for n in status["nodes"]} == {"up"}

    run(topo, body)
