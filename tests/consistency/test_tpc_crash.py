"""Coordinator crash tests: SIGKILL a real coordinator process at each protocol point,
with the decision in the coordinator's log or in a last resource's database, then
recover, and check every participant: nothing left prepared or staged, the sum of
balances unchanged, each transfer in all stores or in none."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from multistore.consistency import TransactionCoordinator, recover_transactions
from multistore.core._tpc import Xid
from multistore.lab.servers import PostgresServer
from tests.consistency.bank import assert_all_or_nothing, bank_urls, create_bank, snapshot
from tests.consistency.checks import (
    decision_records,
    in_doubt,
    kill_coordinator,
    log_records,
    nothing_in_doubt,
)

pytestmark = pytest.mark.server

PARTICIPANTS = 5

# (decision holder, event, nth occurrence in the crashed transfer, does recovery commit
# it?). Holder "": the coordinator's log decides. Holder "maria": MariaDB is the last
# resource, the other four branches are prepared and its own one-phase commit, which
# writes the decision into its database, comes between prepares and phase 2.
CRASH_POINTS = [
    pytest.param("", "preparing", 1, False, id="during-prepare"),
    pytest.param("", "prepared", 2, False, id="after-some-prepares"),
    pytest.param("", "prepared", PARTICIPANTS, False, id="all-prepared-undecided"),
    pytest.param("", "decided", 1, True, id="after-decision-logged"),
    pytest.param("", "committed", 2, True, id="after-some-commits"),
    pytest.param("maria", "preparing", 1, False, id="last-resource-during-prepare"),
    pytest.param("maria", "prepared", 2, False, id="last-resource-after-some-prepares"),
    pytest.param("maria", "prepared", PARTICIPANTS - 1, False, id="before-last-resource-commit"),
    pytest.param("maria", "decided", 1, True, id="after-last-resource-commit"),
    pytest.param("maria", "committed", 2, True, id="last-resource-after-some-commits"),
]


@pytest.mark.parametrize(("holder", "event", "nth", "commits"), CRASH_POINTS)
def test_coordinator_killed_then_recovered(
    holder: str,
    event: str,
    nth: int,
    commits: bool,
    postgres_server: PostgresServer,
    postgres_url: str,
    mariadb_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    urls = bank_urls(postgres_server, postgres_url, mariadb_url, redis_url, tmp_path)
    log = str(tmp_path / "log.db")
    if holder:
        _crash_and_recover(
            urls, event, nth, commits, tmp_path, lambda: decision_records(urls[holder]), holder
        )
        assert log_records(log) == []  # the coordinator's log is not used
    else:
        _crash_and_recover(urls, event, nth, commits, tmp_path, lambda: log_records(log))


def _crash_and_recover(
    urls: dict[str, str],
    event: str,
    nth: int,
    commits: bool,
    tmp_path: Path,
    records: Callable[[], list[tuple[str, str]]],
    holder: str = "",
) -> None:
    """Run three transfers in a coordinator process killed at ``event`` (``nth``) of the
    third, recover, and check every participant; ``records`` reads where the decisions
    are (the log, or the last resource's table)."""
    assert len(urls) == PARTICIPANTS
    node = f"crash-{event}-{nth}"
    log = f"sqlite:///{tmp_path / 'log.db'}"
    config = {
        "participants": urls,
        "log": log,
        "node": node,
        "count": 3,
        "crash_tx": 2,
        "crash_event": event,
        "crash_nth": nth,
        "last_resource": bool(holder),
    }
    kill_coordinator(config)

    left = in_doubt(urls, node)
    if event in ("prepared", "decided"):
        assert sum(map(len, left.values())) >= nth  # really killed with branches prepared
    assert all(Xid.parse(gid).holder == holder for gids in left.values() for gid in gids)
    if holder:
        assert left[holder] == []  # the last resource is never prepared
    crashed = {gid.rsplit(":", 1)[0] for gids in left.values() for gid in gids}
    assert len(crashed) <= 1
    logged = dict(records())
    # presumed abort: nothing logged before the decision, the commit logged before phase 2
    for gtrid in crashed:
        assert logged.get(gtrid) == ("commit" if commits else None)

    report = asyncio.run(recover_transactions(urls, log, node=node, retry_for=10))
    assert report["resolved"], report
    assert report["heuristics"] == []
    assert nothing_in_doubt(urls, node), in_doubt(urls, node)
    committed = assert_all_or_nothing(asyncio.run(snapshot(urls)))
    assert committed == ({"t0", "t1", "t2"} if commits else {"t0", "t1"})
    # commit records are forgotten once done; abort records are kept a while (so a
    # coordinator still in phase 1 could not log commit after recovery aborted)
    aborted_in_doubt = not commits and any(left.values())
    assert [d for _, d in records()] == (["abort"] if aborted_in_doubt else [])


def test_a_killed_coordinators_node_is_taken_over_when_its_lease_runs_out(
    postgres_server: PostgresServer,
    postgres_url: str,
    mariadb_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """A coordinator with no node id of its own is SIGKILLed after deciding commit. A new
    one (its own fresh id) takes the dead node's lease over once it runs out and commits
    the transfer in the background, with nobody running recover."""
    urls = bank_urls(postgres_server, postgres_url, mariadb_url, redis_url, tmp_path)
    log = f"sqlite:///{tmp_path / 'log.db'}"
    config = {
        "participants": urls,
        "log": log,
        "node": None,
        "count": 3,
        "crash_tx": 2,
        "crash_event": "decided",
        "crash_nth": 1,
        "lease_ttl": 1.0,
    }
    kill_coordinator(config)
    left = in_doubt(urls, None)
    [node] = {Xid.parse(gid).node for gids in left.values() for gid in gids}

    async def take_over() -> None:
        async with await TransactionCoordinator.open(
            urls, log=log, lease_ttl=1.0, recover_interval=0.2
        ) as fresh:
            assert fresh.node != node
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while not await asyncio.to_thread(nothing_in_doubt, urls, node):
                if loop.time() > deadline:
                    raise TimeoutError(f"node {node} was not taken over within 60 s")
                await asyncio.sleep(0.1)

    asyncio.run(take_over())
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {"t0", "t1", "t2"}
    assert log_records(str(tmp_path / "log.db")) == []


def test_a_restarted_coordinator_waits_out_its_predecessors_lease_and_recovers(
    tmp_path: Path,
) -> None:
    """SIGKILLed after deciding commit, a coordinator named "restart" is started again
    with the same node id at once: it waits for the dead process's lease to run out,
    then takes the node and commits what it left."""
    urls = {name: f"sqlite:///{tmp_path / name}.db" for name in ("a", "b")}
    asyncio.run(create_bank(urls))
    log = f"sqlite:///{tmp_path / 'log.db'}"
    kill_coordinator(
        {
            "participants": urls,
            "log": log,
            "node": "restart",
            "count": 1,
            "crash_tx": 0,
            "crash_event": "decided",
            "crash_nth": 1,
            "lease_ttl": 2.0,
        }
    )
    assert all(in_doubt(urls, "restart").values())

    async def restart() -> None:
        async with await TransactionCoordinator.open(urls, log=log, node="restart", lease_ttl=2.0):
            assert nothing_in_doubt(urls, "restart")  # recovered at open

    asyncio.run(restart())
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {"t0"}
