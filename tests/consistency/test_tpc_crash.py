"""Coordinator crash tests: SIGKILL a real coordinator process at each protocol point,
then recover, and check every participant: nothing left prepared or staged, the sum of
balances unchanged, each transfer in all stores or in none."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from multistore.consistency import recover_transactions
from multistore.lab.servers import PostgresServer
from tests.consistency.bank import assert_all_or_nothing, create_bank, snapshot
from tests.consistency.checks import in_doubt, log_records, nothing_in_doubt

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
PARTICIPANTS = 5

# (event, nth occurrence in the crashed transfer, does recovery commit it?)
CRASH_POINTS = [
    pytest.param("preparing", 1, False, id="during-prepare"),
    pytest.param("prepared", 2, False, id="after-some-prepares"),
    pytest.param("prepared", PARTICIPANTS, False, id="all-prepared-undecided"),
    pytest.param("decided", 1, True, id="after-decision-logged"),
    pytest.param("committed", 2, True, id="after-some-commits"),
]


@pytest.mark.parametrize(("event", "nth", "commits"), CRASH_POINTS)
def test_coordinator_killed_then_recovered(
    event: str,
    nth: int,
    commits: bool,
    postgres_server: PostgresServer,
    postgres_url: str,
    mariadb_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    urls = {
        "pg1": postgres_url,
        "pg2": postgres_server.create_database(),
        "maria": mariadb_url,
        "lite": f"sqlite:///{tmp_path / 'lite.db'}",
        "redis": redis_url,
    }
    assert len(urls) == PARTICIPANTS
    asyncio.run(create_bank(urls))
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
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tests.consistency.tpc_crash_script", json.dumps(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr

    left = in_doubt(urls, node)
    if event in ("prepared", "decided"):
        assert sum(map(len, left.values())) >= nth  # really killed with branches prepared
    crashed = {gid.rsplit(":", 1)[0] for gids in left.values() for gid in gids}
    assert len(crashed) <= 1
    logged = dict(log_records(str(tmp_path / "log.db")))
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
    assert [d for _, d in log_records(str(tmp_path / "log.db"))] == (
        ["abort"] if aborted_in_doubt else []
    )
