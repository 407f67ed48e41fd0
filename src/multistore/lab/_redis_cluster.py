"""A real Redis Cluster of throwaway processes: primaries with replicas, on loopback.

:class:`RedisClusterServers` starts ``primaries * (1 + replicas)`` Redis servers in
cluster mode (each its own :class:`~multistore.lab.servers.RedisServer`: own port,
directory and log), joins them with ``redis-cli --cluster create`` and waits until
every node reports ``cluster_state:ok``. It keeps the nodes' ports across restarts, so
a killed node comes back as the same member (its ``nodes.conf`` is kept too).

The fault helpers name nodes by their :class:`RedisServer`: :meth:`primary_for` (the
primary that serves a key now), :meth:`replicas_of`, and the waits a test needs after a
fault (:meth:`wait_promoted`, :meth:`wait_ok`), each bounded and polling the nodes'
own view, never sleeping a fixed time.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from multistore._resp_cluster import key_slot
from multistore.lab._process import (
    LOOPBACK,
    START_TIMEOUT,
    BinaryNotFoundError,
    LabError,
    ServerGroup,
    tcp_request,
)
from multistore.lab._redis import RedisServer
from multistore.lab.proxy import TcpProxy

__all__ = ["REDIS_CLI", "RedisClusterServers", "key_slot"]

REDIS_CLI = Path("/usr/bin/redis-cli")
_POLL = 0.05


def _info(node: RedisServer, section: str) -> dict[str, str]:
    raw = _ask(node, "CLUSTER", section) if section == "INFO" else _ask(node, "INFO", section)
    fields: dict[str, str] = {}
    for line in raw.decode(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _ask(node: RedisServer, *args: str) -> bytes:
    """One command, the whole bulk reply (CLUSTER NODES can exceed one recv)."""
    import socket

    payload = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args
    )
    with socket.create_connection((node.host, node.port), timeout=5.0) as sock:
        sock.sendall(payload)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.startswith((b"+", b"-", b":")) and data.endswith(b"\r\n"):
                break
            if data.startswith(b"$"):
                head, _, body = data.partition(b"\r\n")
                size = int(head[1:])
                if size < 0 or len(body) >= size + 2:
                    return body[:size] if size >= 0 else b""
    if data.startswith(b"-"):
        raise LabError(f"{' '.join(args)} on port {node.port}: {data.decode().strip()}")
    return data[1:].rstrip(b"\r\n")


def _serves(ranges: list[str], slot: int) -> bool:
    for text in ranges:
        if text.startswith("["):
            continue  # a slot being migrated
        low, _, high = text.partition("-")
        if int(low) <= slot <= int(high or low):
            return True
    return False


def _nodes_view(node: RedisServer) -> list[tuple[str, int, list[str], str, list[str]]]:
    rows = []
    for line in _ask(node, "CLUSTER", "NODES").decode().splitlines():
        parts = line.split()
        port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
        rows.append((parts[0], port, parts[2].split(","), parts[3], parts[8:]))
    return rows


class RedisClusterServers(ServerGroup):
    """``primaries`` Redis Cluster primaries with ``replicas`` replicas each.

    ``node_timeout`` (ms) is Redis' ``cluster-node-timeout``: how long a node must be
    unreachable before the others fail it over. ``extra_args`` go to every server.

    ``proxies``: every node is reached through two :class:`~multistore.lab.proxy.TcpProxy`
    (its cluster bus port and its client port, announced with
    ``cluster-announce-bus-port`` and ``cluster-announce-port``), and each node dials
    its peers from a loopback address of its own (``bind-source-addr`` 127.0.0.11,
    .12, …), so that :meth:`partition` can cut one node off from the others — the
    cluster bus and the replication links, both ways — while clients (from 127.0.0.1)
    still reach it. The helpers here speak of nodes by their real ports.
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 1,
        *,
        node_timeout: int = 2000,
        appendonly: bool = True,
        extra_args: tuple[str, ...] = (),
        proxies: bool = False,
    ) -> None:
        if primaries < 3:
            raise LabError("Redis Cluster needs at least 3 primaries")
        self.primaries_count = primaries
        self.replicas_count = replicas
        args = (
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(node_timeout),
            # A replica cut off from its primary for a while may still take over: the
            # tests and the lab want the failover, and measure what it loses.
            "--cluster-replica-validity-factor",
            "0",
            "--cluster-require-full-coverage",
            "yes",
            *extra_args,
        )
        self.nodes = [
            RedisServer(appendonly=appendonly, extra_args=args)
            for _ in range(primaries * (1 + replicas))
        ]
        self._created = False
        self.bus_proxies: list[TcpProxy] = []
        self.client_proxies: list[TcpProxy] = []
        self._real_port: dict[int, int] = {}
        self.apart: list[RedisServer] = []
        """Nodes :meth:`partition` cut off (the waits leave them out)."""
        self._proxies = proxies

    # -- lifetime -------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start every node (a no-op for running ones); create the cluster the first
        time; wait until every running node reports ``cluster_state:ok``."""
        if not REDIS_CLI.exists():
            raise BinaryNotFoundError(str(REDIS_CLI), "apt package redis-tools")
        for node in self.nodes:
            node.start(timeout)
        if self._proxies and not self.bus_proxies:
            self._set_up_proxies()
        if not self._created:
            self._create(timeout)
            self._created = True
        self.wait_ok(timeout)

    def _set_up_proxies(self) -> None:
        """A proxy for each node's client and bus ports, made once the nodes run (so
        that no proxy takes a port a node meant to use), announced with ``CONFIG SET``
        and kept in the node's arguments for its restarts."""
        for node in self.nodes:
            bus, client = TcpProxy(LOOPBACK, node.port + 10000), TcpProxy(LOOPBACK, node.port)
            bus.start()
            client.start()
            self.bus_proxies.append(bus)
            self.client_proxies.append(client)
            self._real_port[client.port] = node.port
            settings = {
                "cluster-announce-ip": LOOPBACK,
                "cluster-announce-port": str(client.port),
                "cluster-announce-bus-port": str(bus.port),
                "bind-source-addr": self.source_addr(node),
            }
            for name, value in settings.items():
                _ask(node, "CONFIG", "SET", name, value)
                node.extra_args += [f"--{name}", value]

    def _create(self, timeout: float) -> None:
        command = [
            str(REDIS_CLI),
            "--cluster",
            "create",
            *[f"{LOOPBACK}:{node.port}" for node in self.nodes],
            "--cluster-replicas",
            str(self.replicas_count),
            "--cluster-yes",
        ]
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
        )
        if result.returncode != 0:
            out = (result.stdout + result.stderr).decode(errors="replace")[-3000:]
            raise LabError(f"redis-cli --cluster create failed ({result.returncode}):\n{out}")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
        for proxy in self.bus_proxies + self.client_proxies:
            proxy.stop()

    # -- partitions between the nodes (with ``proxies``) ----------------------------

    def source_addr(self, node: RedisServer) -> str:
        """The loopback address ``node`` dials its peers from (``proxies``)."""
        return f"127.0.0.{11 + self.nodes.index(node)}"

    def partition(self, node: RedisServer) -> None:
        """Cut ``node`` off from every other node, both ways: the cluster bus and the
        replication links. Clients still reach it."""
        if not self.bus_proxies:
            raise LabError("a partition needs a cluster started with proxies=True")
        mine = self.nodes.index(node)
        self.apart.append(node)
        others = [self.source_addr(n) for n in self.nodes if n is not node]
        for i, (bus, client) in enumerate(zip(self.bus_proxies, self.client_proxies, strict=True)):
            if i == mine:
                bus.cut()
                client.cut_from(*others)
            else:
                bus.cut_from(self.source_addr(node))
                client.cut_from(self.source_addr(node))

    def heal(self) -> None:
        """Undo :meth:`partition`."""
        for proxy in self.bus_proxies + self.client_proxies:
            proxy.restore()
        self.apart.clear()

    def _view(self, node: RedisServer) -> list[tuple[str, int, list[str], str, list[str]]]:
        """``node``'s CLUSTER NODES, with real ports for announced ones."""
        return [
            (node_id, self._real_port.get(port, port), flags, parent, ranges)
            for node_id, port, flags, parent, ranges in _nodes_view(node)
        ]

    # -- addresses ------------------------------------------------------------------

    def url(self, **options: str) -> str:
        """A ``redis+cluster://`` URL listing every node as seeds."""
        hosts = ",".join(f"{n.host}:{n.port}" for n in self.nodes)
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"redis+cluster://{hosts}" + (f"/?{query}" if query else "")

    def running(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.is_running()]

    def node_at(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise LabError(f"no node of this cluster on port {port}")

    # -- the cluster's own view -----------------------------------------------------

    def _table(self) -> list[tuple[str, int, list[str], str, list[str]]]:
        """(node id, port, flags, primary id or '-', slot ranges) from a running node."""
        last: Exception | None = None
        for node in self.running():
            try:
                return self._view(node)
            except (OSError, LabError) as exc:
                last = exc
        raise LabError(f"no running node of the cluster answers CLUSTER NODES: {last}")

    def node_id(self, node: RedisServer) -> str:
        """The cluster's id of ``node`` (for ``CLUSTER SETSLOT`` and the like)."""
        for node_id, port, _, _, _ in self._table():
            if port == node.port:
                return node_id
        raise LabError(f"port {node.port} is not a member of the cluster")

    def primaries(self) -> list[RedisServer]:
        """The nodes that are primaries now (as a running node sees it)."""
        return [
            self.node_at(port)
            for _, port, flags, _, _ in self._table()
            if "master" in flags and "fail" not in flags
        ]

    def replicas_of(self, primary: RedisServer) -> list[RedisServer]:
        """The nodes that replicate ``primary``, as it sees them itself."""
        rows = self._view(primary) if primary.is_running() else self._table()
        ids = {port: node_id for node_id, port, _, _, _ in rows}
        target = ids[primary.port]
        return [self.node_at(port) for _, port, _, parent, _ in rows if parent == target]

    def primary_for(self, key: bytes | str) -> RedisServer:
        """The primary that serves ``key``'s slot now: named so by a running node's
        view and a primary by its own account (a node restarted a moment ago may
        still hold an old view)."""
        slot = key_slot(key)
        for viewer in self.running():
            try:
                view = self._view(viewer)
            except (OSError, LabError):
                continue
            for _, port, flags, _, ranges in view:
                if "master" not in flags or "fail" in flags or not _serves(ranges, slot):
                    continue
                node = self.node_at(port)
                with contextlib.suppress(OSError, LabError):
                    if node.is_running() and _info(node, "replication").get("role") == "master":
                        return node
        raise LabError(f"no primary serves slot {slot} now")

    # -- waits ----------------------------------------------------------------------

    def wait_ok(self, timeout: float = START_TIMEOUT) -> None:
        """Until every running node says ``cluster_state:ok`` and knows all
        ``primaries`` primaries with all slots, and every running replica has its
        first copy and a live link to its primary."""
        self._wait(self._all_ok, timeout, "cluster_state:ok on every running node")

    def _all_ok(self) -> bool:
        for node in self.running():
            if node in self.apart:
                continue  # cut off by partition(): it knows it is in the minority
            try:
                info = _info(node, "INFO")
            except (OSError, LabError):
                return False
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != "16384":
                return False
            if int(info.get("cluster_known_nodes", "0")) != len(self.nodes):
                return False
            try:
                view = self._view(node)
            except (OSError, LabError):
                return False
            # Every live primary serves slots (the replicas of a fresh cluster start as
            # empty primaries until CLUSTER REPLICATE has spread).
            live = [row for row in view if "fail" not in row[2] and "fail?" not in row[2]]
            if any("master" in flags and not ranges for _, _, flags, _, ranges in live):
                return False
            if sum("master" in flags for _, _, flags, _, _ in live) != self.primaries_count:
                return False
            try:
                replication = _info(node, "replication")
            except (OSError, LabError):
                return False
            if replication.get("role") == "slave" and (
                replication.get("master_link_status") != "up"
                or replication.get("master_sync_in_progress") != "0"
            ):
                return False  # a replica still loading its first copy
        return True

    def wait_promoted(self, old: RedisServer, timeout: float = START_TIMEOUT) -> RedisServer:
        """After ``old`` (a primary) died: wait until one of its replicas is a primary
        serving its slots and the cluster is ok again; that new primary."""
        replicas = [r for r in self.replicas_of(old) if r.is_running()]
        if not replicas:
            raise LabError(f"the primary on port {old.port} has no running replica to promote")
        promoted: list[RedisServer] = []

        def done() -> bool:
            for replica in replicas:
                with contextlib.suppress(OSError, LabError):
                    if _info(replica, "replication").get("role") == "master":
                        promoted[:] = [replica]
                        return self._all_ok()
            return False

        self._wait(done, timeout, f"a replica of port {old.port} promoted")
        return promoted[0]

    def wait_replica_synced(self, node: RedisServer, timeout: float = START_TIMEOUT) -> None:
        """Until ``node`` (restarted) is a replica whose link to its primary is up."""

        def done() -> bool:
            with contextlib.suppress(OSError, LabError):
                info = _info(node, "replication")
                return info.get("role") == "slave" and info.get("master_link_status") == "up"
            return False

        self._wait(done, timeout, f"port {node.port} replicating")

    def wait_replicated(self, primary: RedisServer, timeout: float = START_TIMEOUT) -> None:
        """Until every replica of ``primary`` has acknowledged all it wrote so far (the
        replication offsets agree)."""

        def done() -> bool:
            with contextlib.suppress(OSError, LabError):
                info = _info(primary, "replication")
                target = info.get("master_repl_offset")
                replicas = [v for k, v in info.items() if k.startswith("slave")]
                return bool(replicas) and all(f"offset={target}," in v for v in replicas)
            return False

        self._wait(done, timeout, f"the replicas of port {primary.port} caught up")

    def _wait(self, check: object, timeout: float, what: str) -> None:
        assert callable(check)
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                states = "; ".join(self._describe())
                raise TimeoutError(f"Redis Cluster: no {what} within {timeout:.0f} s ({states})")
            time.sleep(_POLL)

    def _describe(self) -> Iterator[str]:
        for node in self.nodes:
            if not node.is_running():
                yield f"{node.port} down"
                continue
            try:
                yield f"{node.port} {_info(node, 'INFO').get('cluster_state')}"
            except (OSError, LabError) as exc:
                yield f"{node.port} {exc}"

    # -- data -----------------------------------------------------------------------

    def flushall(self) -> None:
        """Empty every primary (replicas follow)."""
        for node in self.primaries():
            reply = tcp_request(node.host, node.port, b"FLUSHALL\r\n", timeout=5.0)
            if not reply.startswith(b"+OK"):
                raise LabError(f"FLUSHALL on port {node.port}: {reply!r}")
