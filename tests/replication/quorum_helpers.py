"""Shared helpers for the quorum tests: a topology of embedded or Redis nodes that can
take nodes down and hold their writes, and small waiting and inspection helpers.

Each test runs against both topologies through :class:`Topology`, which builds
coordinators (several may share the nodes, each with its own handles on them, as
separate processes would) and can take a node down and back: a real ``SIGKILL`` and
restart of the Redis server, or the embedded node's ``set_down`` switch on every
coordinator's handle. :meth:`Topology.hold_writes` makes a node's writes wait while
its reads go on: a second SQLite connection holding the write lock, or Redis's
``CLIENT PAUSE … WRITE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from multistore.core._quorum import QuorumConfig
from multistore.errors import MultistoreError
from multistore.lab.servers import RedisServer, unique_name
from multistore.replication._hints import HintStore
from multistore.replication._qnodes import QuorumNode, Record, SQLiteNode
from multistore.replication._qredis import RedisNode
from multistore.replication._quorum import QuorumCluster

N3 = QuorumConfig(n=3, r=2, w=2)
SLOPPY3 = QuorumConfig(n=3, r=2, w=2, sloppy=True)


class Topology:
    """Nodes of one kind and the coordinators built on them."""

    def __init__(self, kind: str, tmp: Path, servers: list[RedisServer] | None) -> None:
        self.kind = kind
        self.tmp = tmp
        self.servers = servers or []
        self.prefix = unique_name("q") + ":"
        self.clusters: list[QuorumCluster] = []

    def node(self, name: str) -> QuorumNode:
        """A new handle on node ``name`` (not opened yet for SQLite: see :meth:`open_node`)."""
        if self.kind == "embedded":
            return SQLiteNode(name, self.tmp / f"{name}.db")
        server = self.servers[int(name.removeprefix("node"))]
        if not server.is_running():
            server.start()
        return RedisNode.from_url(name, server.url(), timeout=1.0, prefix=self.prefix)

    async def open_node(self, name: str) -> QuorumNode:
        node = self.node(name)
        if isinstance(node, SQLiteNode):
            await node.open()
        return node

    async def cluster(self, m: int = 3, **options: Any) -> QuorumCluster:
        """A coordinator over ``node0`` … ``node{m-1}``, with handles of its own; the
        first keeps its hints in ``hints.db``, later ones in memory (unless given)."""
        options.setdefault("config", N3)
        options.setdefault("timeout", 1.0)
        default_hints = self.tmp / "hints.db" if not self.clusters else None
        hints = await HintStore.open(options.pop("hints_path", default_hints))
        nodes = [await self.open_node(f"node{i}") for i in range(m)]
        cluster = QuorumCluster(nodes, hints=hints, **options)
        self.clusters.append(cluster)
        return cluster

    def _handles(self, name: str) -> list[SQLiteNode]:
        handles = []
        for cluster in self.clusters:
            if name in cluster.nodes:
                node = cluster.node(name)
                assert isinstance(node, SQLiteNode)
                handles.append(node)
        return handles

    def kill(self, name: str) -> None:
        """Take node ``name`` down for every coordinator."""
        if self.kind == "embedded":
            for handle in self._handles(name):
                handle.set_down(True)
        else:
            self.servers[int(name.removeprefix("node"))].kill()

    def revive(self, name: str) -> None:
        if self.kind == "embedded":
            for handle in self._handles(name):
                handle.set_down(False)
        else:
            self.servers[int(name.removeprefix("node"))].start()

    @contextlib.contextmanager
    def hold_writes(self, *names: str) -> Iterator[None]:
        """Inside the block, writes to these nodes wait (and apply after the block);
        reads are answered (until a held write is queued ahead of them on an embedded
        node, whose calls run one at a time)."""
        with contextlib.ExitStack() as stack:
            for name in names:
                if self.kind == "embedded":
                    stack.enter_context(_sqlite_write_lock(self.tmp / f"{name}.db"))
                else:
                    stack.enter_context(_redis_write_pause(self.servers[int(name[4:])]))
            yield


@contextlib.contextmanager
def _sqlite_write_lock(path: Path) -> Iterator[None]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@contextlib.contextmanager
def _redis_write_pause(server: RedisServer) -> Iterator[None]:
    assert server.command("CLIENT", "PAUSE", "60000", "WRITE").startswith(b"+OK")
    try:
        yield
    finally:
        assert server.command("CLIENT", "UNPAUSE").startswith(b"+OK")


def run(topo: Topology, body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        try:
            await body()
        finally:
            for cluster in topo.clusters:
                await cluster.close()

    asyncio.run(main())


async def eventually(check: Callable[[], Awaitable[bool]], what: str, bound: float = 15.0) -> None:
    deadline = time.monotonic() + bound
    while not await check():
        if time.monotonic() > deadline:  # a bound on the wait, not on speed
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.05)


def keys_homed_on(cluster: QuorumCluster, node: str, count: int) -> list[str]:
    keys = (f"key{i}" for i in range(100_000))
    return [k for k in keys if node in cluster.preference_list(k)][:count]


async def held(cluster: QuorumCluster, key: str, nodes: Any = None) -> dict[str, Record | None]:
    """The record each node (default: every node of the cluster) that answers holds
    for ``key``."""
    names = cluster.nodes if nodes is None else list(nodes)
    records: dict[str, Record | None] = {}
    for name in names:
        with contextlib.suppress(MultistoreError):
            records[name] = await cluster.node(name).read(key.encode())
    return records


async def no_pending_hints(c: QuorumCluster) -> bool:
    await c.deliver_hints()
    return not await c.hints.counts()
