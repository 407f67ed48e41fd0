"""Membership changes under load: a node joins (bootstrap) or leaves (decommission)
while writers and R=1 readers keep going, on embedded nodes and Redis servers."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from multistore.core._hlc import HLCTimestamp
from multistore.core._quorum import Consistency
from multistore.errors import ErrorCode, InvalidValueError, Outcome
from multistore.lab.servers import RedisServer, unique_name
from multistore.replication._quorum import QuorumCluster, QuorumError
from multistore.replication._qurl import open_cluster
from multistore.urls import parse_url
from tests.cli import run_cli
from tests.replication.quorum_helpers import Topology, held, run

KEYS = [f"member:{i}" for i in range(120)]


class Load:
    """Writers that update the keys at W=QUORUM and readers that read them at R=1,
    until stopped; a read that finds nothing is a miss (every key exists before)."""

    def __init__(self, cluster: QuorumCluster) -> None:
        self.cluster = cluster
        self.acked: dict[str, HLCTimestamp] = {}
        self.misses: list[str] = []
        self.reads = 0
        self.writes = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def seed(self) -> None:
        for key in KEYS:
            written = await self.cluster.put(key, "seed", w=Consistency.ALL)
            self.acked[key] = written.version.hlc

    def start(self) -> None:
        self._tasks = [
            *(asyncio.ensure_future(self._writer(seed)) for seed in (1, 2)),
            *(asyncio.ensure_future(self._reader(seed)) for seed in (3, 4)),
        ]

    async def _writer(self, seed: int) -> None:
        rnd = random.Random(seed)
        while not self._stop.is_set():
            key = rnd.choice(KEYS)
            try:
                written = await self.cluster.put(key, f"w{seed}-{self.writes}")
            except QuorumError:
                continue  # not acknowledged (a slow moment of the machine): proves nothing
            self.writes += 1
            self.acked[key] = max(self.acked[key], written.version.hlc)

    async def _reader(self, seed: int) -> None:
        rnd = random.Random(seed)
        while not self._stop.is_set():
            key = rnd.choice(KEYS)
            try:
                got = await self.cluster.get(key, r=1)
            except QuorumError:
                continue
            self.reads += 1
            if not got.found:
                self.misses.append(key)

    async def wait_reads(self, more: int, bound: float = 60.0) -> None:
        """Wait (a bounded time) until ``more`` further reads are done."""
        target = self.reads + more
        deadline = time.monotonic() + bound
        while self.reads < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.reads} of {target} reads done")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def _every_replica_holds_the_latest(cluster: QuorumCluster, load: Load) -> None:
    await cluster.wait_background()
    # a replica write that timed out on the busy machine left a hint: hand it over
    await cluster.deliver_hints()
    assert not await cluster.hints.counts()
    for key in KEYS:
        homes = cluster.preference_list(key)
        records = await held(cluster, key, homes)
        assert set(records) == set(homes)
        for name, record in records.items():
            assert record is not None, f"{name} lacks {key}"
            assert HLCTimestamp.parse(record[0]) >= load.acked[key], f"{name}: stale {key}"


def _under_load(
    topo: Topology, change: Callable[[QuorumCluster], Awaitable[None]], m: int = 4
) -> None:
    async def body() -> None:
        cluster = await topo.cluster(m=m)
        load = Load(cluster)
        await load.seed()
        load.start()
        try:
            await load.wait_reads(20)
            acked, before = dict(load.acked), cluster.ring
            await change(cluster)
            # what was acknowledged before the change is on every replica a key gained
            for key in KEYS:
                gained = set(cluster.preference_list(key)) - set(before.preference_list(key, 3))
                for name, record in (await held(cluster, key, gained)).items():
                    assert record is not None and HLCTimestamp.parse(record[0]) >= acked[key], name
            await load.wait_reads(100)  # R=1 reads once the change completed
        finally:
            await load.stop()
        assert load.misses == []
        assert load.writes > 0
        await _every_replica_holds_the_latest(cluster, load)

    run(topo, body)


def test_a_node_joins_under_load_and_no_r1_read_misses(topo: Topology) -> None:
    """Regression: there were no membership changes; reopening with a fifth node moved
    a quarter of the keys to a node that held none of them, and R=1 reads missed."""

    async def join(cluster: QuorumCluster) -> None:
        before = {key: cluster.preference_list(key) for key in KEYS}
        change = await cluster.add_node(await topo.open_node("node4"))
        assert change.action == "join" and "node4" in change.nodes
        assert change.hints_pending == 0
        moved = [key for key in KEYS if "node4" in cluster.preference_list(key)]
        assert moved and change.records_streamed >= len(moved)
        # the nodes that handed ranges over forgot them (no stray copies)
        for key in moved:
            (gone,) = set(before[key]) - set(cluster.preference_list(key))
            assert await cluster.node(gone).read(key.encode()) is None

    _under_load(topo, join)


def test_a_node_leaves_under_load_and_no_r1_read_misses(topo: Topology) -> None:
    async def leave(cluster: QuorumCluster) -> None:
        change = await cluster.remove_node("node1")
        assert change.action == "leave" and "node1" not in change.nodes
        assert change.hints_pending == 0 and change.records_streamed > 0
        assert cluster.nodes == ["node0", "node2", "node3"]
        assert all("node1" not in cluster.preference_list(key) for key in KEYS)

    _under_load(topo, leave)


def test_a_change_that_cannot_stream_leaves_the_ring_as_it_was(topo: Topology) -> None:
    async def body() -> None:
        cluster = await topo.cluster(m=4, failure_threshold=99)
        for key in KEYS[:30]:
            await cluster.put(key, "v", w=Consistency.ALL)
        topo.kill("node0")
        topo.kill("node1")  # with N=3, W=2 each range needs two of its old replicas
        with pytest.raises(QuorumError, match="ring is unchanged") as caught:
            await cluster.add_node(await topo.open_node("node4"))
        assert caught.value.outcome is Outcome.DEFINITE
        assert cluster.nodes == ["node0", "node1", "node2", "node3"]
        assert "node4" not in cluster.ring
        topo.revive("node0")
        topo.revive("node1")
        with pytest.raises(InvalidValueError, match="already"):
            await cluster.add_node(await topo.open_node("node2"))
        three = await topo.cluster(m=3)
        with pytest.raises(InvalidValueError, match="N=3"):
            await three.remove_node("node0")

    run(topo, body)


def test_a_join_whose_new_node_times_out_is_a_definite_error_and_can_be_retried(
    topo: Topology,
) -> None:
    """Writes to the joining node time out (they may still apply there), so the change
    fails before the switch: that it did not happen is certain, whatever the node
    did, so the error is a definite QuorumError; run again, the same join completes."""

    async def body() -> None:
        cluster = await topo.cluster(m=3, timeout=0.3, failure_threshold=99)
        for key in KEYS[:30]:
            await cluster.put(key, "v", w=Consistency.ALL)
        node = await topo.open_node("node3")
        with topo.hold_writes("node3"), pytest.raises(QuorumError, match="unchanged") as caught:
            await cluster.add_node(node)
        assert caught.value.outcome is Outcome.DEFINITE
        assert "node3" not in cluster.ring and cluster.nodes == ["node0", "node1", "node2"]
        change = await cluster.add_node(await topo.open_node("node3"))
        assert change.nodes == ("node0", "node1", "node2", "node3")
        for key in KEYS[:30]:
            records = await held(cluster, key, cluster.preference_list(key))
            assert all(record is not None for record in records.values()), key

    run(topo, body)


# -- the CLI ------------------------------------------------------------------------------


async def _write_keys(url: str) -> None:
    cluster = await open_cluster(parse_url(url))
    try:
        for key in KEYS[:40]:
            await cluster.put(key, key, w=Consistency.ALL)
    finally:
        await cluster.close()


async def _every_replica_has_every_key(url: str, nodes: list[str]) -> None:
    cluster = await open_cluster(parse_url(url))
    try:
        assert cluster.nodes == nodes
        for key in KEYS[:40]:
            records = await held(cluster, key, cluster.preference_list(key))
            assert all(record is not None for record in records.values()), key
    finally:
        await cluster.close()


def _cli(*args: str, cwd: Path) -> dict[str, Any]:
    result = run_cli("quorum", *args, "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_cli_adds_and_removes_embedded_nodes(tmp_path: Path) -> None:
    url = f"quorum:///{tmp_path / 'cluster'}?nodes=3&n=3"
    asyncio.run(_write_keys(url))
    (tmp_path / "multistore.toml").write_text(f'[replication.quorum]\nurl = "{url}"\n')
    joined = _cli("add-node", cwd=tmp_path)  # the URL from the config
    assert joined["node"] == "node3" and joined["hints_pending"] == 0
    assert joined["url"] == f"quorum:///{tmp_path / 'cluster'}?n=3&nodes=4"
    asyncio.run(_every_replica_has_every_key(joined["url"], ["node0", "node1", "node2", "node3"]))
    left = _cli("remove-node", "node1", "--url", joined["url"], cwd=tmp_path)
    assert left["nodes"] == ["node0", "node2", "node3"]
    asyncio.run(_every_replica_has_every_key(left["url"], ["node0", "node2", "node3"]))
    refused = run_cli("quorum", "remove-node", "node9", "--url", left["url"], cwd=tmp_path)
    assert refused.returncode == ErrorCode.USAGE and "node0, node2, node3" in refused.stderr


@pytest.mark.server
def test_cli_adds_and_removes_redis_nodes(redis_nodes: list[RedisServer], tmp_path: Path) -> None:
    first, second, third, fourth = (f"127.0.0.1:{s.port}" for s in redis_nodes[:4])
    prefix = unique_name("cli") + ":"
    url = f"quorum://{first}/0?n=3&prefix={prefix}&peers={second},{third}"
    asyncio.run(_write_keys(url))
    joined = _cli("add-node", "--url", url, "--node", f"redis://{fourth}/0", cwd=tmp_path)
    assert joined["node"] == "node3"
    asyncio.run(_every_replica_has_every_key(joined["url"], ["node0", "node1", "node2", "node3"]))
    left = _cli("remove-node", "node0", "--url", joined["url"], cwd=tmp_path)
    assert left["url"].startswith(f"quorum://{second}/0?")
    asyncio.run(_every_replica_has_every_key(left["url"], ["node1", "node2", "node3"]))
