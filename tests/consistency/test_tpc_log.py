"""The decision log: group commit, abort-wins races, forgetting (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from multistore.consistency import DecisionLog
from multistore.core._tpc import Decision, Xid
from multistore.errors import DuplicateKeyError


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.server)],
)
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'log.db'}"
    return str(request.getfixturevalue("postgres_url"))


def xid() -> Xid:
    return Xid("n1", uuid.uuid4().hex)


def test_concurrent_decisions_share_one_log_write(log_url: str) -> None:
    async def body() -> None:
        log = await DecisionLog.open(log_url)
        try:
            xids = [xid() for _ in range(10)]
            await asyncio.gather(*(log.log_commit(x, ["a", "b"]) for x in xids))
            assert log.writes == 1  # one transaction (one fsync) for all ten
            assert [await log.decision(x) for x in xids] == [Decision.COMMIT] * 10
            records = await log.records("n1")
            assert {r.gtrid for r in records} == {x.gtrid for x in xids}
            assert records[0].participants == ("a", "b")
        finally:
            await log.close()

    asyncio.run(body())


def test_abort_logged_by_recovery_wins_over_a_later_commit(log_url: str) -> None:
    async def body() -> None:
        log = await DecisionLog.open(log_url)
        try:
            late, other = xid(), xid()
            assert await log.log_abort(late) is Decision.ABORT
            results = await asyncio.gather(
                log.log_commit(late, ["a"]), log.log_commit(other, ["a"]), return_exceptions=True
            )
            assert isinstance(results[0], DuplicateKeyError) and results[1] is None
            assert await log.decision(late) is Decision.ABORT
            assert await log.decision(other) is Decision.COMMIT
            assert await log.log_abort(other) is Decision.COMMIT  # a decision stands
        finally:
            await log.close()

    asyncio.run(body())


def test_forgotten_records_go_with_the_next_write_or_at_close(log_url: str) -> None:
    async def body() -> None:
        log = await DecisionLog.open(log_url)
        first, second = xid(), xid()
        await log.log_commit(first, ["a"])
        log.forget_later(first)
        assert await log.decision(first) is Decision.COMMIT  # not yet
        await log.log_commit(second, ["a"])
        assert await log.decision(first) is None
        log.forget_later(second)
        await log.close()
        log = await DecisionLog.open(log_url)
        try:
            assert await log.records() == []
        finally:
            await log.close()

    asyncio.run(body())


def test_node_leases_run_on_the_log_databases_clock(
    log_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease taken for 30 s, read by a client whose clock is an hour ahead: on
    PostgreSQL the lease still has its 30 s (the database's clock decides); SQLite has no
    clock of its own, so there the client's clock decides (one machine, one clock)."""

    async def body() -> None:
        log = await DecisionLog.open(log_url)
        try:
            assert await log.nodes.acquire("n1", "me", 30.0)
            assert not await log.nodes.acquire("n1", "someone else", 30.0)
            real = time.time
            monkeypatch.setattr(time, "time", lambda: real() + 3600)
            remaining = (await log.nodes.leases())["n1"].remaining
            if log_url.startswith("postgresql"):
                assert 0 < remaining <= 30
                assert not await log.nodes.acquire("n1", "someone else", 30.0)
            else:
                assert remaining < 0
        finally:
            await log.close()

    asyncio.run(body())
