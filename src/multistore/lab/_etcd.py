"""etcd launchers: one member (:class:`EtcdServer`) and a cluster of them
(:class:`EtcdCluster`, three by default) on loopback, Debian's ``etcd-server`` 3.4.

Each member has a client port (its ``port``) and a peer port (Raft), both fixed at
construction, so a killed member restarts as the same member with its data. The
cluster is ready when every running member reports itself healthy (``/health``: a
leader is known and the member answers reads through Raft).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from multistore.lab._process import (
    LOOPBACK,
    START_TIMEOUT,
    LabError,
    ServerGroup,
    ServerProcess,
    free_port,
    unique_name,
)

__all__ = ["ETCD", "EtcdCluster", "EtcdServer"]

ETCD = Path("/usr/bin/etcd")
_POLL = 0.05


def _get_json(url: str, timeout: float = 2.0) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return json.loads(reply.read())


class EtcdServer(ServerProcess):
    """One etcd member. ``initial_cluster`` is etcd's ``name=peer-url,…`` list of every
    member (this one included); ``token`` names the cluster."""

    name = "etcd"

    def __init__(
        self, member: str, *, port: int, peer_port: int, initial_cluster: str, token: str
    ) -> None:
        super().__init__(port=port)
        self.member = member
        self.peer_port = peer_port
        self.initial_cluster = initial_cluster
        self.token = token

    def required_binaries(self) -> list[tuple[str, str]]:
        return [(str(ETCD), "apt package etcd-server")]

    @property
    def client_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def peer_url(self) -> str:
        return f"http://{LOOPBACK}:{self.peer_port}"

    def _command(self) -> list[str]:
        return [
            str(ETCD),
            "--name",
            self.member,
            "--data-dir",
            str(self.datadir),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self.initial_cluster,
            "--initial-cluster-token",
            self.token,
            "--initial-cluster-state",
            "new",
            # Fast elections for a loopback cluster (defaults: 100 ms / 1000 ms).
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "1000",
            "--log-level",
            "warn",
            "--logger",
            "zap",
        ]

    def _ready(self) -> bool:
        # The process answers; a leader may not be known yet (the cluster waits for it).
        try:
            _get_json(f"{self.client_url}/version")
        except (OSError, ValueError):
            return False
        return True

    def healthy(self) -> bool:
        """True when this member knows a leader and serves reads through Raft."""
        try:
            reply = _get_json(f"{self.client_url}/health")
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return isinstance(reply, dict) and reply.get("health") == "true"


class EtcdCluster(ServerGroup):
    """``size`` etcd members on loopback. :meth:`url` is an ``etcd://`` seed list."""

    def __init__(self, size: int = 3) -> None:
        token = unique_name("etcd")
        names = [f"e{i}" for i in range(size)]
        ports = [(free_port(), free_port()) for _ in names]
        initial = ",".join(
            f"{n}=http://{LOOPBACK}:{peer}" for n, (_, peer) in zip(names, ports, strict=True)
        )
        self.members = [
            EtcdServer(n, port=client, peer_port=peer, initial_cluster=initial, token=token)
            for n, (client, peer) in zip(names, ports, strict=True)
        ]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start every member (running ones are left alone) and wait until every
        running member is healthy."""
        # Launched together, then waited for: a member serves clients only once it has
        # published itself through Raft, which needs a quorum of members running.
        for member in self.members:
            member.launch()
        for member in self.members:
            member.wait_started(timeout)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not all(m.healthy() for m in self.members if m.is_running()):
            if time.monotonic() > deadline:
                states = ", ".join(
                    f"{m.member}:{'up' if m.is_running() else 'down'}" for m in self.members
                )
                raise TimeoutError(f"etcd cluster not healthy within {timeout:.0f} s ({states})")
            time.sleep(_POLL)

    def endpoints(self) -> list[str]:
        """``host:port`` of every member's client port."""
        return [f"{LOOPBACK}:{m.port}" for m in self.members]

    def url(self, prefix: str = "") -> str:
        query = f"/?prefix={prefix}" if prefix else ""
        return "etcd://" + ",".join(self.endpoints()) + query

    def leader(self) -> EtcdServer:
        """The member that leads now (as a running member reports it)."""
        for member in self.members:
            if not member.is_running():
                continue
            try:
                status = _post_json(f"{member.client_url}/v3/maintenance/status", {})
            except (OSError, ValueError):
                continue
            header = status.get("header")
            leader_id = status.get("leader")
            member_id = header.get("member_id") if isinstance(header, dict) else None
            if leader_id and leader_id == member_id:
                return member
        raise LabError("no running etcd member says it leads")

    def cleanup(self) -> None:
        for member in self.members:
            member.cleanup()


def _post_json(url: str, body: object, timeout: float = 2.0) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        data = json.loads(reply.read())
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object: {data!r}")
    return data
