"""``multistore quorum add-node`` on bad input: a clear usage error before anything
changes. A node the printed URL could not name again (its name holds the ``names=``
separator, or is empty), or a ``--node`` that is the storage of a node the cluster
has already, would otherwise join, stream, and have the nodes that lost ranges forget
them, leaving a cluster no URL opens correctly."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from multistore.core._quorum import Consistency, QuorumConfig
from multistore.errors import ErrorCode, InvalidURLError
from multistore.lab.servers import RedisServer, unique_name
from multistore.replication._quorum import QuorumCluster
from multistore.replication._qurl import open_cluster
from multistore.replication._qwidecolumn import QuorumWideColumnStore
from multistore.urls import parse_url
from tests.cli import run_cli, run_python
from tests.replication.quorum_helpers import held

KEYS = [f"cli:{i}" for i in range(40)]


async def _write_keys(url: str) -> None:
    cluster = await open_cluster(parse_url(url))
    try:
        for key in KEYS:
            await cluster.put(key, key, w=Consistency.ALL)
    finally:
        await cluster.close()


async def _every_node_has_every_key(url: str) -> None:
    cluster = await open_cluster(parse_url(url))
    try:
        for key in KEYS:
            records = await held(cluster, key)
            assert len(records) == len(cluster.nodes), key
            assert all(record is not None for record in records.values()), key
    finally:
        await cluster.close()


@pytest.mark.parametrize("name", ["a,b", "", "sub/node"])
def test_add_node_refuses_a_name_the_url_cannot_name_again(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "cluster"
    url = f"quorum:///{folder}?nodes=3&n=3"
    asyncio.run(_write_keys(url))
    before = sorted(p.name for p in folder.iterdir())
    refused = run_cli("quorum", "add-node", name, "--url", url, cwd=tmp_path)
    assert refused.returncode == ErrorCode.USAGE, refused.stdout + refused.stderr
    assert "node name" in refused.stderr
    assert sorted(p.name for p in folder.iterdir()) == before  # no node file made
    asyncio.run(_every_node_has_every_key(url))  # nothing streamed away or forgotten


@pytest.mark.parametrize("action", ["add-node", "remove-node node0"])
def test_a_membership_change_of_a_folder_without_the_cluster_changes_nothing(
    tmp_path: Path, action: str
) -> None:
    """A mistyped folder (or node count) is a usage error, not a new cluster made of
    empty node files that a node then joins."""
    folder = tmp_path / "cluster"
    asyncio.run(_write_keys(f"quorum:///{folder}?nodes=3&n=3"))
    for url in (f"quorum:///{tmp_path / 'clustr'}?nodes=3&n=3", f"quorum:///{folder}?nodes=4"):
        refused = run_cli("quorum", *action.split(), "--url", url, cwd=tmp_path)
        assert refused.returncode == ErrorCode.USAGE, refused.stdout + refused.stderr
        assert "no node file" in refused.stderr
    assert not (tmp_path / "clustr").exists()
    assert sorted(p.name for p in folder.glob("*.db")) == [
        "hints.db",
        "node0.db",
        "node1.db",
        "node2.db",
    ]


@pytest.mark.server
def test_add_node_refuses_a_redis_node_the_cluster_has_already(
    redis_nodes: list[RedisServer], tmp_path: Path
) -> None:
    first, second, third = (f"127.0.0.1:{s.port}" for s in redis_nodes[:3])
    prefix = unique_name("cli") + ":"
    url = f"quorum://{first}/0?n=3&prefix={prefix}&peers={second},{third}"
    asyncio.run(_write_keys(url))
    for again in (f"redis://{second}/0", f"redis://{second}"):
        refused = run_cli("quorum", "add-node", "--url", url, "--node", again, cwd=tmp_path)
        assert refused.returncode == ErrorCode.USAGE, refused.stdout + refused.stderr
        assert "node1" in refused.stderr
    asyncio.run(_every_node_has_every_key(url))


def test_add_node_killed_while_nodes_forget_moved_ranges_has_printed_the_url(
    tmp_path: Path,
) -> None:
    """``add-node`` SIGKILLed once the ring has switched, as soon as a node that lost a
    range has forgotten one of its records: the command must have printed the URL to open
    the cluster with by then, and on that ring every key is still on W replicas. (The
    keys were written while node2 was down, by a coordinator whose hints are gone: on
    the old ring they are on two replicas, and forgetting one leaves a single copy.)"""
    folder = tmp_path / "cluster"
    config = QuorumConfig(n=3, r=2, w=2)

    async def write() -> None:
        cluster = await QuorumCluster.embedded(folder, 3, config=config, hints_path=None)
        try:
            cluster.node("node2").set_down(True)
            for key in KEYS:
                await cluster.put(key, key)
        finally:
            await cluster.close()

    asyncio.run(write())
    killed = run_python(
        ["-m", "tests.replication.quorum_join_kill_script", f"quorum:///{folder}?nodes=3&n=3", "1"],
        cwd=Path(__file__).parents[2],
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    output = " ".join((killed.stdout + killed.stderr).split())
    assert f"quorum:///{folder}?n=3&nodes=4" in output, output

    async def check() -> None:
        cluster = await open_cluster(parse_url(f"quorum:///{folder}?n=3&nodes=4"))
        try:
            for key in KEYS:
                records = await held(cluster, key, cluster.preference_list(key))
                assert sum(record is not None for record in records.values()) >= 2, key
                assert (await cluster.get(key)).value == key
        finally:
            await cluster.close()

    asyncio.run(check())


@pytest.mark.parametrize("option", ["timeout=abc", "vnodes=x", "n=three", "nodes=4.5"])
def test_a_quorum_url_option_that_is_no_number_is_an_invalid_url(
    tmp_path: Path, option: str
) -> None:
    async def body() -> None:
        with pytest.raises(InvalidURLError, match=option.split("=")[0]):
            await QuorumWideColumnStore.open_url(f"quorum:///{tmp_path / 'c'}?{option}")

    asyncio.run(body())
    assert not (tmp_path / "c").exists()  # nothing opened
