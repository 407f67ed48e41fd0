"""The 2PC decision log on a real three-member etcd cluster: presumed abort through
create-if-absent transactions, and decisions that outlive the coordinator's machine
and the loss of an etcd member."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from multistore.consistency import (
    DecisionLog,
    NodeBusyError,
    TransactionCoordinator,
    recover_transactions,
)
from multistore.core._tpc import Decision, Xid
from multistore.errors import DuplicateKeyError, Outcome, StoreUnavailableError
from multistore.lab._etcd import EtcdCluster
from multistore.lab.servers import PostgresServer, free_port
from tests.consistency.bank import assert_all_or_nothing, create_bank, snapshot
from tests.consistency.checks import in_doubt, nothing_in_doubt

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]


def _url(etcd: EtcdCluster) -> str:
    return etcd.url(prefix=f"/t-{uuid.uuid4().hex[:8]}/")


def test_presumed_abort_on_etcd(etcd_cluster: EtcdCluster) -> None:
    async def main() -> None:
        log = await DecisionLog.open(_url(etcd_cluster))
        try:
            a, b = Xid("n1", uuid.uuid4().hex), Xid("n1", uuid.uuid4().hex)
            await log.log_commit(a, ["pg", "lite"])
            assert await log.decision(a) is Decision.COMMIT
            assert await log.log_abort(a) is Decision.COMMIT  # the commit stands
            assert await log.log_abort(b) is Decision.ABORT
            with pytest.raises(DuplicateKeyError, match="abort"):
                await log.log_commit(b, ["pg"])  # recovery aborted it first
            records = await log.records("n1")
            assert [(r.gtrid, r.decision) for r in records] == [
                (a.gtrid, Decision.COMMIT),
                (b.gtrid, Decision.ABORT),
            ]
            assert records[0].participants == ("lite", "pg")
            assert await log.records("other") == []
            log.forget_later(a)
            await log.flush()
            assert await log.decision(a) is None
            assert await log.purge_aborts(older_than=0) == 1
            assert await log.records() == []
        finally:
            await log.close()

    asyncio.run(main())


def test_an_unreachable_etcd_is_a_definite_error_naming_it() -> None:
    async def main() -> None:
        with pytest.raises(StoreUnavailableError) as info:
            await DecisionLog.open(f"etcd://127.0.0.1:{free_port()}?timeout=1")
        assert info.value.outcome is Outcome.DEFINITE
        assert "etcd" in str(info.value)

    asyncio.run(main())


def test_a_node_id_is_an_etcd_lease(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    """A second coordinator cannot take a node id a live one holds; closing gives it
    back at once, and the log remembers the node and its id."""
    log = _url(etcd_cluster)
    participants = {"lite": f"sqlite:///{tmp_path / 'lite.db'}"}

    async def main() -> None:
        first = await TransactionCoordinator.open(participants, log=log, node="n-live")
        try:
            with pytest.raises(NodeBusyError, match="live coordinator"):
                await TransactionCoordinator.open(
                    participants, log=log, node="n-live", node_wait=0.5
                )
            leases = await first.log.nodes.leases()
            assert leases["n-live"].live and leases["n-live"].owner == first.owner
        finally:
            await first.close()
        second = await TransactionCoordinator.open(participants, log=log, node="n-live")
        try:
            assert second.log.log_id == first.log.log_id and len(second.log.log_id) == 10
        finally:
            await second.close()
        reopened = await DecisionLog.open(log)
        try:
            leases = await reopened.nodes.leases()
            assert set(leases) == {"n-live"} and not leases["n-live"].live
        finally:
            await reopened.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("event", "nth", "commits", "lease_ttl"),
    [
        pytest.param("prepared", 3, False, 1.0, id="all-prepared-undecided"),
        pytest.param("decided", 1, True, 8.0, id="after-decision-logged"),
    ],
)
def test_a_decision_outlives_the_coordinator_and_an_etcd_member(
    etcd_cluster: EtcdCluster,
    postgres_server: PostgresServer,
    postgres_url: str,
    tmp_path: Path,
    event: str,
    nth: int,
    commits: bool,
    lease_ttl: float,
) -> None:
    urls = {
        "pg1": postgres_url,
        "pg2": postgres_server.create_database(),
        "lite": f"sqlite:///{tmp_path / 'lite.db'}",
    }
    asyncio.run(create_bank(urls))
    log = _url(etcd_cluster)
    node = f"etcd-{event}"
    config = {
        "participants": urls,
        "log": log,
        "node": node,
        "count": 3,
        "crash_tx": 2,
        "crash_event": event,
        "crash_nth": nth,
        "lease_ttl": lease_ttl,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tests.consistency.tpc_crash_script", json.dumps(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert sum(map(len, in_doubt(urls, node).values())) >= 2  # really left branches prepared
    if lease_ttl > 1:
        # The dead coordinator's etcd lease still runs (etcd drops it after lease_ttl
        # seconds without renewal): a recovery run leaves its node alone meanwhile.
        early = asyncio.run(recover_transactions(urls, log))
        assert node in early["skipped"], early
        assert sum(map(len, in_doubt(urls, node).values())) >= 2
    # The coordinator's machine is gone (nothing of it is used again), and so is the
    # etcd leader: the decision is on the other members.
    leader = etcd_cluster.leader()
    leader.kill()
    try:
        etcd_cluster.wait_healthy()
        report = asyncio.run(recover_transactions(urls, log, node=node, retry_for=20))
    finally:
        leader.start()
        etcd_cluster.wait_healthy()
    assert report["resolved"], report
    assert report["heuristics"] == []
    assert nothing_in_doubt(urls, node), in_doubt(urls, node)
    committed = assert_all_or_nothing(asyncio.run(snapshot(urls)))
    assert committed == ({"t0", "t1", "t2"} if commits else {"t0", "t1"})
