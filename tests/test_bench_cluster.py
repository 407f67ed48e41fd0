"""`multistore bench cluster` runs end to end: a few rounds on the session's Redis
Cluster and Patroni cluster (instead of clusters of its own), its four rows printed,
exit 0. The numbers are the benchmark's business, not this test's."""

from __future__ import annotations

from pathlib import Path

import pytest

from multistore.lab._patroni import PatroniCluster
from multistore.lab._redis_cluster import RedisClusterServers
from tests.cli import run_cli

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[1]


def test_bench_cluster_prints_its_rows(
    redis_cluster: RedisClusterServers, patroni_cluster: PatroniCluster, tmp_path: Path
) -> None:
    # The session's Patroni cluster may still be recovering from an earlier test's kill
    # or switchover: the bench reads from the leader it names now.
    patroni_cluster.wait_streaming()
    env = {
        "MULTISTORE_BENCH_ROUNDS": "1",
        "MULTISTORE_BENCH_OPS": "5",
        "MULTISTORE_BENCH_REDIS_CLUSTER": redis_cluster.url(),
        "MULTISTORE_BENCH_PATRONI": " ".join(
            [",".join(patroni_cluster.rest_endpoints()), patroni_cluster.url("postgres")]
        ),
        "COLUMNS": "250",
    }
    result = run_cli(
        "bench", "cluster", "--dir", str(REPO / "benchmarks"), cwd=tmp_path, env=env, timeout=240
    )
    assert result.returncode == 0, result.stderr
    assert "benchmark: cluster" in result.stdout
    for case in (
        "kv set one key, Redis Cluster (3 primaries + 3 replicas)",
        "kv get one key, Redis Cluster (3 primaries + 3 replicas)",
        "PK read through the Patroni router, strong (leader)",
        "PK read through the Patroni router (a replica)",
    ):
        assert case in result.stdout, result.stdout
