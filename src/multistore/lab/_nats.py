"""NATS with JetStream: one server (:class:`NatsServer`) and a clustered JetStream of
three (:class:`NatsCluster`), Debian's ``nats-server`` 2.9, on loopback.

Every server has a client port (``port``), a route port for the cluster and a
monitoring port; JetStream keeps its files in the server's directory, so a killed
server restarts with its streams. The cluster is ready when every running server says
``/healthz`` is ok (JetStream's meta group has a leader and the server is current).
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
    ServerGroup,
    ServerProcess,
    free_port,
    unique_name,
)

__all__ = ["NATS_SERVER", "NatsCluster", "NatsServer"]

NATS_SERVER = Path("/usr/sbin/nats-server")
_POLL = 0.05


class NatsServer(ServerProcess):
    """One nats-server with JetStream; ``routes`` are the cluster ports of its peers."""

    name = "nats"

    def __init__(
        self,
        server_name: str,
        *,
        cluster: str,
        port: int,
        route_port: int,
        monitor_port: int,
        routes: list[int],
    ) -> None:
        super().__init__(port=port)
        self.server_name = server_name
        self.cluster = cluster
        self.route_port = route_port
        self.monitor_port = monitor_port
        self.routes = routes

    def required_binaries(self) -> list[tuple[str, str]]:
        return [(str(NATS_SERVER), "apt package nats-server")]

    def _prepare(self) -> None:
        self.datadir.mkdir()
        routes = ", ".join(f'"nats-route://{LOOPBACK}:{p}"' for p in self.routes)
        (self.rootdir / "nats.conf").write_text(
            f"""server_name: "{self.server_name}"
listen: "{LOOPBACK}:{self.port}"
http: "{LOOPBACK}:{self.monitor_port}"
jetstream {{
  store_dir: "{self.datadir}"
  max_memory_store: 64MB
  max_file_store: 1GB
}}
cluster {{
  name: "{self.cluster}"
  listen: "{LOOPBACK}:{self.route_port}"
  routes: [{routes}]
}}
"""
        )

    def _command(self) -> list[str]:
        return [str(NATS_SERVER), "-c", str(self.rootdir / "nats.conf")]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.monitor_port}/varz", timeout=2):
                return True
        except (OSError, urllib.error.URLError):
            return False

    def healthy(self) -> bool:
        """``/healthz`` says ok: JetStream is up and this server is current."""
        try:
            with urllib.request.urlopen(
                f"http://{LOOPBACK}:{self.monitor_port}/healthz", timeout=2
            ) as reply:
                return bool(json.loads(reply.read()).get("status") == "ok")
        except (OSError, ValueError, urllib.error.URLError):
            return False


class NatsCluster(ServerGroup):
    """``size`` JetStream servers in one cluster. :meth:`url` is a ``nats://`` seed list."""

    def __init__(self, size: int = 3) -> None:
        name = unique_name("nats")
        ports = [(free_port(), free_port(), free_port()) for _ in range(size)]
        self.servers = [
            NatsServer(
                f"n{i}",
                cluster=name,
                port=client,
                route_port=route,
                monitor_port=monitor,
                routes=[r for j, (_, r, _) in enumerate(ports) if j != i],
            )
            for i, (client, route, monitor) in enumerate(ports)
        ]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start every server (together: JetStream needs a quorum of them) and wait until
        every running one is healthy."""
        for server in self.servers:
            server.launch()
        for server in self.servers:
            server.wait_started(timeout)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not all(s.healthy() for s in self.servers if s.is_running()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"NATS JetStream cluster not healthy within {timeout:.0f} s")
            time.sleep(_POLL)

    def url(self) -> str:
        return "nats://" + ",".join(f"{LOOPBACK}:{s.port}" for s in self.servers)

    def cleanup(self) -> None:
        for server in self.servers:
            server.cleanup()
