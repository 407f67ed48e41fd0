"""Fixtures of the quorum tests: five Redis servers shared by the session, and the
topology (embedded SQLite nodes, or those servers) each quorum test runs against."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from multistore.lab.servers import RedisServer, start_redis_cluster
from tests.replication.quorum_helpers import Topology


@pytest.fixture(scope="session")
def redis_nodes() -> Iterator[list[RedisServer]]:
    servers = start_redis_cluster(5)
    try:
        yield servers
    finally:
        for server in servers:
            server.cleanup()


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.server)])
def topo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Topology]:
    servers = request.getfixturevalue("redis_nodes") if request.param == "redis" else None
    topology = Topology(request.param, tmp_path, servers)
    yield topology
    for server in topology.servers:
        if not server.is_running():
            server.start()
