"""Writes that race a membership change (``add_node``), and what docs/replication/quorum.md
promises about them: a write acknowledged during the change is on W of its replicas on
the old ring *and* on the new one; a write that fails definitely leaves nothing behind
(no hint that the change would deliver).

Nodes are real embedded SQLite nodes. Where the order of events matters, a node is
held at a chosen call by :class:`GatedNode` (the call waits on an event, then runs
for real), so the tests do not depend on timing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from multistore.core._quorum import QuorumConfig
from multistore.errors import MultistoreError, Outcome
from multistore.replication._hints import HintStore
from multistore.replication._qnodes import SQLiteNode
from multistore.replication._quorum import QuorumCluster, QuorumError

N3 = QuorumConfig(n=3, r=2, w=2)


class GatedNode(SQLiteNode):
    """A real SQLite node whose writes of a marked value, and whose Merkle listings,
    can be held: the call waits until its gate opens, then runs as usual."""

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name, path)
        self.writes = asyncio.Event()
        self.writes.set()
        self.listings = asyncio.Event()
        self.listings.set()
        self.marker = b"\x00"
        self.held_writes = 0
        self.marked_writes = 0
        """Writes of the marked value asked of this node."""
        self.finished_writes = 0
        """Writes of the marked value that ended (stored, refused or failed)."""

    async def write_lww(self, group: bytes, member: bytes, hlc: str, blob: bytes) -> bool:
        marked = self.marker in blob
        self.marked_writes += marked
        try:
            if marked and not self.writes.is_set():
                self.held_writes += 1
                await self.writes.wait()
            return await super().write_lww(group, member, hlc, blob)
        finally:
            self.finished_writes += marked

    async def entries(self, lo: int, hi: int) -> list[tuple[str, str]]:
        await self.listings.wait()
        return await super().entries(lo, hi)


async def until(check: Callable[[], bool], what: str, bound: float = 30.0) -> None:
    """Wait (a bounded time) until ``check()``."""
    deadline = time.monotonic() + bound
    while not check():
        if time.monotonic() > deadline:  # a bound on the wait, not on speed
            raise TimeoutError(f"not within {bound} s: {what}")
        await asyncio.sleep(0.005)


async def _gated(name: str, tmp: Path) -> GatedNode:
    node = GatedNode(name, tmp / f"{name}.db")
    await node.open()
    return node


async def _cluster(tmp: Path, m: int, **options: object) -> tuple[QuorumCluster, list[GatedNode]]:
    nodes = [await _gated(f"node{i}", tmp) for i in range(m)]
    hints = await HintStore.open(tmp / "hints.db")
    options.setdefault("config", N3)
    return QuorumCluster(nodes, hints=hints, **options), nodes  # type: ignore[arg-type]


def _key_gained_by(cluster: QuorumCluster, node: str) -> str:
    """A key whose replicas change when ``node`` joins."""
    ring = cluster.ring.add(node)
    keys = (f"key{i}" for i in range(10_000))
    return next(k for k in keys if node in ring.preference_list(k.encode(), cluster.config.n))


class _Join:
    """A key node3's join moves, and the parts its replicas play: ``leaving`` loses
    it, ``slow`` and ``acking`` keep it (names for the tests that use them)."""

    def __init__(self, cluster: QuorumCluster) -> None:
        self.key = _key_gained_by(cluster, "node3")
        self.new_homes = cluster.ring.add("node3").preference_list(self.key.encode(), 3)
        self.old_homes = cluster.preference_list(self.key)
        (self.leaving,) = (n for n in self.old_homes if n not in self.new_homes)
        self.slow, self.acking = (n for n in self.old_homes if n != self.leaving)


async def _joining(
    tmp: Path, **options: object
) -> tuple[QuorumCluster, list[GatedNode], GatedNode, _Join]:
    """Three nodes on the ring, node3 ready to join, and a key its join moves."""
    cluster, nodes = await _cluster(tmp, 3, timeout=30, **options)
    return cluster, nodes, await _gated("node3", tmp), _Join(cluster)


def test_a_definitely_failed_write_during_a_join_never_applies(tmp_path: Path) -> None:
    """Guarantee 4: a definite QuorumError means the write did not happen and never
    will. During ``add_node`` a write whose replicas, the joining one included, all
    refuse definitely (down) fails definitely and keeps no hint, so the change has
    nothing of it to deliver: the value never appears. (It kept a hint for the joining
    node, which the change delivered.)"""

    async def body() -> None:
        cluster, nodes, joining, join = await _joining(tmp_path)
        key = join.key
        try:
            for node in nodes:  # the change waits before streaming its first range
                node.listings.clear()
            change = asyncio.ensure_future(cluster.add_node(joining))
            await until(lambda: cluster.pending_ring is not None, "the new ring is pending")
            for node in [*nodes, joining]:
                node.set_down(True)
            with pytest.raises(QuorumError) as failed:
                await cluster.put(key, "never")
            assert failed.value.outcome is Outcome.DEFINITE
            assert await cluster.hints.counts() == {}
            for node in [*nodes, joining]:
                node.set_down(False)
            for node in nodes:
                node.listings.set()
            await change
            assert not (await cluster.get(key, r=3)).found
        finally:
            for node in [*nodes, joining]:
                node.listings.set()
            await cluster.close()

    asyncio.run(body())


def test_a_write_acknowledged_during_a_join_is_on_w_of_its_new_replicas(
    tmp_path: Path,
) -> None:
    """Guarantee 9: writes made during the change reach W of their new replicas before
    they are acknowledged, and guarantee 1 across an ``add_node``. A write that starts
    while the ring is pending is acknowledged by the old replica that loses the range
    and one that keeps it; the joining node and the other replica that keeps it then
    fail. Two acknowledgements on the old ring, one on the new: the write must not be
    acknowledged (it was, and once the change cleaned the leaving replica's copy a
    QUORUM read of the other two new replicas found nothing)."""

    async def body() -> None:
        cluster, nodes, joining, join = await _joining(tmp_path)
        by_name = {node.name: node for node in [*nodes, joining]}
        key, new_homes, leaving, slow = join.key, join.new_homes, join.leaving, join.slow
        acking = join.acking
        try:
            for node in by_name.values():
                node.marker = b'"during"'
                node.writes.clear()
            change = asyncio.ensure_future(cluster.add_node(joining))
            await until(lambda: cluster.pending_ring is not None, "the new ring is pending")
            put = asyncio.ensure_future(cluster.put(key, "during"))
            await until(
                lambda: cluster.pending_ring is None and "node3" in cluster.ring,
                "the ring switched",
            )
            by_name[acking].writes.set()
            by_name[leaving].writes.set()
            await until(lambda: joining.held_writes == 1, "the write reached the joining node")
            for name in ("node3", slow):  # both fail: refused, definitely
                by_name[name].set_down(True)
                by_name[name].writes.set()
            try:
                await put
            except QuorumError as error:
                assert not error.definite  # two replicas hold it: it may spread
                await change
                return
            await change
            for name in ("node3", slow):
                by_name[name].set_down(False)
            holders = [n for n in new_homes if await by_name[n].read(key.encode()) is not None]
            # a QUORUM read whose (random) first two stops are new replicas without it
            homes = cluster.preference_list(key)
            starts = [i for i in range(3) if not {homes[i], homes[(i + 1) % 3]} & set(holders)]
            start = starts[0] if starts else 0
            state = random.getstate()
            random.seed(next(s for s in range(1000) if int(random.Random(s).random() * 3) == start))
            try:
                assert (await cluster.get(key)).found
            finally:
                random.setstate(state)
            assert len(holders) >= 2, f"only {holders} of {new_homes} hold it"
        finally:
            for node in by_name.values():
                node.writes.set()
            await cluster.close()

    asyncio.run(body())


def test_a_write_during_a_join_waits_for_w_of_its_new_replicas(tmp_path: Path) -> None:
    """Guarantee 9, the other way round: a write made during the change whose joining
    replica fails is acknowledged once W of its new replicas hold it — here only after
    the slow replica that stays answers, not at the W-th acknowledgement of the old
    ring — and the joining node gets it through its hint."""

    async def body() -> None:
        cluster, nodes, joining, join = await _joining(tmp_path)
        by_name = {node.name: node for node in [*nodes, joining]}
        key, old_homes, leaving, slow = join.key, join.old_homes, join.leaving, join.slow
        new_homes = join.new_homes
        try:
            for node in by_name.values():
                node.marker = b'"during"'
            by_name[slow].writes.clear()
            for node in nodes:  # the change waits before streaming its first range
                node.listings.clear()
            change = asyncio.ensure_future(cluster.add_node(joining))
            await until(lambda: cluster.pending_ring is not None, "the new ring is pending")
            joining.set_down(True)
            put = asyncio.ensure_future(cluster.put(key, "during"))
            await until(lambda: joining.finished_writes == 1, "the joining node refused it")
            await until(lambda: by_name[leaving].finished_writes == 1, "the old ring has W")
            assert by_name[slow].held_writes == 1
            for _ in range(20):  # the old ring has W acks: the write still waits for slow
                await asyncio.sleep(0)
            assert not put.done()
            by_name[slow].writes.set()
            written = await put
            assert set(written.acks) == set(old_homes)
            assert written.hinted == ("node3",)
            joining.set_down(False)
            for node in nodes:
                node.listings.set()
            done = await change
            assert done.hints_pending == 0  # delivered to the joining node by the change
            for name in new_homes:
                assert await by_name[name].read(key.encode()) is not None, name
        finally:
            for node in by_name.values():
                node.writes.set()
                node.listings.set()
            await cluster.close()

    asyncio.run(body())


def test_a_write_during_a_join_is_not_sent_when_too_few_new_replicas_are_up(
    tmp_path: Path,
) -> None:
    """Guarantee 4 during a change: when fewer of a write's replicas on the new ring are
    up than W (as the failure detector knows), nothing is sent and the error is
    definite, though its old replicas could have acknowledged it."""

    async def body() -> None:
        now = [1_000.0]
        cluster, nodes, joining, join = await _joining(
            tmp_path, failure_threshold=1, clock=lambda: now[0]
        )
        by_name = {node.name: node for node in [*nodes, joining]}
        key, staying = join.key, join.slow
        try:
            for node in by_name.values():
                node.marker = b'"unsent"'
            for node in nodes:
                node.listings.clear()
            change = asyncio.ensure_future(cluster.add_node(joining))
            await until(lambda: cluster.pending_ring is not None, "the new ring is pending")
            for name in ("node3", staying):  # marked down by one failed call each
                by_name[name].set_down(True)
                with pytest.raises(MultistoreError):
                    await cluster.call_node(name, lambda n: n.ping())
                assert not cluster.detector.available(name)
            with pytest.raises(QuorumError) as refused:
                await cluster.put(key, "unsent")
            assert refused.value.outcome is Outcome.DEFINITE
            assert [node.marked_writes for node in by_name.values()] == [0, 0, 0, 0]
            for name in ("node3", staying):
                by_name[name].set_down(False)
            now[0] += 10  # the detector probes them again
            for node in nodes:
                node.listings.set()
            await change
            assert not (await cluster.get(key, r=3)).found
        finally:
            for node in by_name.values():
                node.listings.set()
            await cluster.close()

    asyncio.run(body())
