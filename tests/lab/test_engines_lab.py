"""The lab against real distributed engines: what each promises across a failover,
reproduced by a register workload whose history the checkers judge.

- Redis Cluster loses acknowledged writes when a primary dies before its replica
  copied them; with ``WAIT`` for one replica, no acknowledged write is lost (the writes
  that could not be confirmed are indeterminate instead).
- PostgreSQL under Patroni in synchronous mode loses no acknowledged write when the
  leader is killed.
- etcd stays linearizable when its leader is killed.
- A Redis Cluster primary cut off from the other nodes (cluster bus and replication,
  through the proxies the nodes announce) while clients still reach it: the majority
  promotes its replica and the writes the old primary took meanwhile are lost; with
  ``WAIT`` none acknowledged is lost, but reads are still not linearizable.

The session clusters are handed to the lab, which heals them before it returns.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from multistore.errors import InvalidValueError
from multistore.lab._engines_lab import EngineLabOptions, run_engine_lab
from multistore.lab._etcd import EtcdCluster
from multistore.lab._patroni import PatroniCluster
from multistore.lab._process import LabError
from multistore.lab._redis_cluster import RedisClusterServers
from tests.cli import run_cli

pytestmark = pytest.mark.server


@pytest.mark.parametrize("wait", [0, 1])
def test_redis_cluster_loses_acknowledged_writes_unless_it_waits_for_a_replica(
    redis_cluster: RedisClusterServers, redis_cluster_url: str, wait: int
) -> None:
    options = EngineLabOptions(
        target="redis-cluster", fault="lagging-failover", duration=3.0, wait_replicas=wait
    )
    report = asyncio.run(run_engine_lab(options, topology=redis_cluster))
    added = report["set"]
    assert report["counts"]["final_reads_ok"] == options.keys and added["read"]
    assert "killed primary" in report["faults"][0]["fault"]
    assert added["acknowledged"] > 0 and added["failed_present"] == 0
    if wait:
        # Writes WAIT could not confirm are indeterminate; none acknowledged is lost.
        assert added["lost"] == 0 and report["counts"]["lost_writes"] == 0
        assert added["indeterminate"] + report["counts"]["info"] > 0
    else:
        assert added["lost"] > 0  # acknowledged, then gone with the primary
        assert report["verdict"] == "anomalies" and report["exit_code"] == 80


@pytest.fixture(scope="module")
def proxied_redis_cluster() -> Iterator[RedisClusterServers]:
    """A Redis Cluster whose nodes reach each other only through TCP proxies."""
    cluster = RedisClusterServers(proxies=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.mark.parametrize("wait", [0, 1])
def test_a_redis_cluster_primary_cut_off_from_the_other_nodes_loses_writes(
    proxied_redis_cluster: RedisClusterServers, wait: int
) -> None:
    options = EngineLabOptions(
        target="redis-cluster", fault="partition", duration=3.0, wait_replicas=wait
    )
    report = asyncio.run(run_engine_lab(options, topology=proxied_redis_cluster))
    added, counts = report["set"], report["counts"]
    assert "off from the other nodes" in report["faults"][0]["fault"]
    assert counts["final_reads_ok"] == options.keys and added["read"]
    assert added["acknowledged"] > 0 and added["failed_present"] == 0
    if wait:
        # The old primary's writes after the cut: no replica confirms them.
        assert added["lost"] == 0 and counts["lost_writes"] == 0
        assert added["indeterminate"] + counts["info"] > 0
    else:
        assert added["lost"] > 0  # acknowledged by the old primary, gone with it
        assert report["verdict"] == "anomalies" and report["exit_code"] == 80


def test_a_partition_needs_the_proxies(redis_cluster: RedisClusterServers) -> None:
    with pytest.raises(LabError, match="proxies=True"):
        redis_cluster.partition(redis_cluster.nodes[0])


def test_patroni_in_synchronous_mode_loses_no_acknowledged_write(
    patroni_cluster: PatroniCluster,
) -> None:
    options = EngineLabOptions(target="patroni", fault="kill", duration=3.0, synchronous=True)
    report = asyncio.run(run_engine_lab(options, topology=patroni_cluster))
    counts = report["counts"]
    assert "killed the Patroni leader" in report["faults"][0]["fault"]
    assert counts["ok"] > 0 and counts["final_reads_ok"] == options.keys
    assert counts["lost_writes"] == 0 and report["set"]["lost"] == 0
    assert report["verdict"] == "valid"


def test_etcd_stays_linearizable_when_its_leader_is_killed(etcd_cluster: EtcdCluster) -> None:
    options = EngineLabOptions(target="etcd", fault="kill", duration=2.0)
    report = asyncio.run(run_engine_lab(options, topology=etcd_cluster))
    assert "killed the etcd leader" in report["faults"][0]["fault"]
    assert report["counts"]["non_linearizable_keys"] == 0 and report["set"]["lost"] == 0
    assert report["verdict"] == "valid"


def test_bad_options_name_the_problem() -> None:
    with pytest.raises(InvalidValueError, match="unknown lab target 'mongo'"):
        EngineLabOptions(target="mongo")
    with pytest.raises(InvalidValueError, match="does not apply to etcd"):
        EngineLabOptions(target="etcd", fault="lagging-failover")
    with pytest.raises(InvalidValueError, match="redis-cluster target only"):
        EngineLabOptions(target="patroni", wait_replicas=1)


def test_the_cli_starts_its_own_engine_and_prints_the_verdict(tmp_path: Path) -> None:
    run = run_cli(
        "lab",
        "engine",
        "--target",
        "etcd",
        "--fault",
        "none",
        "--duration",
        "1",
        "--json",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["verdict"] == "valid" and report["config"]["target"] == "etcd"
    text = run_cli("lab", "engine", "--target", "nope", cwd=tmp_path)
    assert text.returncode != 0 and "unknown lab target 'nope'" in text.stdout + text.stderr
