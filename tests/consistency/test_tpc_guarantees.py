"""Two-phase commit keeps its guarantees whatever else runs: a recovery run beside a live
coordinator, a second coordinator, a caller cancelled in phase 2, a prepared SQLite
branch whose rows changed before recovery, an unexpected exception from a driver."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from multistore.consistency import (
    DecisionLog,
    NodeBusyError,
    TransactionAbortedError,
    TransactionCoordinator,
    TransactionIndeterminateError,
    open_participant,
    recover_once,
    recover_transactions,
)
from multistore.consistency._tpc_sqlite import SQLiteBranch
from multistore.core._tpc import Xid
from multistore.lab.proxy import TcpProxy
from multistore.lab.servers import PostgresServer
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore
from tests.consistency.bank import (
    assert_all_or_nothing,
    create_bank,
    log_url,
    snapshot,
    transfer,
)
from tests.consistency.checks import expire_lease, in_doubt, nothing_in_doubt


class Stop(BaseException):
    """The coordinator stops at a protocol point (raised from an event hook), as if its
    process had died there; the process itself goes on."""


def stop_at(event: str) -> Callable[[str, Xid, str], None]:
    def on_event(seen: str, xid: Xid, name: str) -> None:
        if seen == event:
            raise Stop

    return on_event


def sqlite_bank(tmp_path: Path, *names: str) -> dict[str, str]:
    urls = {name: f"sqlite:///{tmp_path / name}.db" for name in names}
    asyncio.run(create_bank(urls))
    return urls


# -- 1. recovery beside a live coordinator ---------------------------------------------


async def _recover_while_a_transfer_decides(
    urls: dict[str, str], recovery_urls: dict[str, str], log: str, live: TransactionCoordinator
) -> Any:
    """One recovery pass (every node) whose in-doubt listing is taken before transfer t0
    prepares and whose log records are read after t0's commit was decided."""
    decision_log = await DecisionLog.open(log)
    rec = {name: await open_participant(name, url) for name, url in recovery_urls.items()}
    first, last = list(rec)
    listed = asyncio.Event()
    first_listing, last_listing = rec[first].in_doubt, rec[last].in_doubt

    async def first_in_doubt() -> list[Xid]:
        found = await first_listing()
        listed.set()
        return found

    async def last_in_doubt() -> list[Xid]:
        await listed.wait()
        found = await last_listing()
        with pytest.raises((Stop, TransactionIndeterminateError)):
            await transfer(live, 0, list(urls))  # prepared and decided after the listing
        return found

    rec[first].in_doubt = first_in_doubt  # type: ignore[method-assign]
    rec[last].in_doubt = last_in_doubt  # type: ignore[method-assign]
    try:
        return await recover_once(decision_log, rec)
    finally:
        for participant in rec.values():
            await participant.close()
        await decision_log.close()


def test_recovery_beside_a_live_coordinator_keeps_its_commit_sqlite(tmp_path: Path) -> None:
    """The live coordinator stops right after logging commit (both branches prepared):
    the recovery that listed before the prepare must neither report heuristics nor
    forget the record, and the transfer commits once its coordinator is gone."""
    urls = sqlite_bank(tmp_path, "a", "b")
    log = log_url(tmp_path)

    async def body() -> None:
        live = await TransactionCoordinator.open(
            urls, log=log, node="live", on_event=stop_at("decided")
        )
        try:
            report = await _recover_while_a_transfer_decides(urls, urls, log, live)
            assert report.heuristics == [], report.heuristics
            assert report.forgotten == []
        finally:
            await live.close()

    asyncio.run(body())
    final = asyncio.run(recover_transactions(urls, log, retry_for=5))
    assert final["resolved"] and final["heuristics"] == [], final
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {"t0"}
    assert nothing_in_doubt(urls, "live")


@pytest.mark.server
def test_recovery_beside_a_live_coordinator_keeps_its_commit_servers(
    postgres_server: PostgresServer,
    postgres_url: str,
    mariadb_url: str,
    tcp_proxy: Callable[[str, int], TcpProxy],
    tmp_path: Path,
) -> None:
    """The issue's transfer: MariaDB commits, PostgreSQL's connection dies in phase 2
    (the app is told recovery will commit it). A recovery that listed before the prepare
    and read the log after the decision must not forget the record: the transfer ends
    990 + 1010, never 990 + 1000."""
    proxy = tcp_proxy("127.0.0.1", postgres_server.port)
    database = postgres_url.rsplit("/", 1)[1]
    direct = {"a": mariadb_url, "b": postgres_url}
    urls = {"a": mariadb_url, "b": f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}"}
    asyncio.run(create_bank(direct))
    log = log_url(tmp_path)

    def on_event(event: str, xid: Xid, name: str) -> None:
        if event == "decided":
            proxy.cut()  # PostgreSQL's phase 2 fails; MariaDB's goes through

    async def body() -> None:
        live = await TransactionCoordinator.open(
            urls, log=log, node="live", on_event=on_event, commit_timeout=5
        )
        try:
            report = await _recover_while_a_transfer_decides(urls, direct, log, live)
            assert report.heuristics == [], report.heuristics
            assert report.forgotten == []
        finally:
            await live.close()
            proxy.restore()

    asyncio.run(body())
    final = asyncio.run(recover_transactions(direct, log, retry_for=10))
    assert final["resolved"] and final["heuristics"] == [], final
    snap = asyncio.run(snapshot(direct))
    assert assert_all_or_nothing(snap) == {"t0"}  # 990 + 1010 on account 0
    assert nothing_in_doubt(direct, "live")


def test_recovery_of_a_live_node_is_refused_with_one_line(tmp_path: Path) -> None:
    urls = sqlite_bank(tmp_path, "a", "b")
    log = log_url(tmp_path)

    async def body() -> None:
        async with await TransactionCoordinator.open(urls, log=log, node="busy"):
            with pytest.raises(NodeBusyError, match="node 'busy' is held by a live coordinator"):
                await recover_transactions(urls, log, node="busy")
            report = await recover_transactions(urls, log)  # every node: the live one is left
            assert report["resolved"] and "busy" not in report["nodes"]

    asyncio.run(body())


# -- 2. node ids: none shared, none taken twice, none orphaned --------------------------


def test_coordinators_left_at_their_defaults_do_not_take_each_others_branches(
    tmp_path: Path,
) -> None:
    """Two coordinators opened with no node id, each with its own log, over the same
    participants: the second's recovery at open must leave the first's prepared branches
    (decided commit in the first's log) alone."""
    urls = sqlite_bank(tmp_path, "a", "b")
    first_log, second_log = (f"sqlite:///{tmp_path / name}" for name in ("one.db", "two.db"))

    async def body() -> None:
        async with await TransactionCoordinator.open(
            urls, log=first_log, on_event=stop_at("decided")
        ) as first:
            with pytest.raises(Stop):
                await transfer(first, 0, list(urls))
            node = first.node
        async with await TransactionCoordinator.open(urls, log=second_log) as second:
            assert second.node != node
        assert all(in_doubt(urls, node).values())  # still prepared, still decided commit
        report = await recover_transactions(urls, first_log)
        assert report["resolved"] and len(report["committed"]) == 2

    asyncio.run(body())
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {"t0"}


def test_a_second_live_coordinator_with_the_same_node_is_refused(tmp_path: Path) -> None:
    urls = sqlite_bank(tmp_path, "a", "b")
    log = log_url(tmp_path)

    async def body() -> None:
        async with await TransactionCoordinator.open(urls, log=log, node="shop-1"):
            with pytest.raises(NodeBusyError, match="node 'shop-1' is held by a live"):
                await TransactionCoordinator.open(urls, log=log, node="shop-1", node_wait=0)
        async with await TransactionCoordinator.open(urls, log=log, node="shop-1"):
            pass  # free again once the first closed

    asyncio.run(body())


def test_a_fresh_coordinator_takes_over_what_a_closed_one_left(tmp_path: Path) -> None:
    urls = sqlite_bank(tmp_path, "a", "b")
    log = log_url(tmp_path)

    async def body() -> None:
        async with await TransactionCoordinator.open(
            urls, log=log, on_event=stop_at("decided")
        ) as first:
            with pytest.raises(Stop):
                await transfer(first, 0, list(urls))
        assert all(in_doubt(urls, first.node).values())
        async with await TransactionCoordinator.open(urls, log=log) as second:
            assert second.node != first.node
            assert second.last_recovery is not None
            assert first.node in second.last_recovery.nodes
        assert nothing_in_doubt(urls, first.node)

    asyncio.run(body())
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {"t0"}


# -- 3. a node purges only its own markers ----------------------------------------------


def _age_markers(urls: dict[str, str], seconds: float) -> None:
    for url in urls.values():
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        with db:
            db.execute("UPDATE multistore_tpc_applied SET created = created - ?", (seconds,))
        db.close()


def test_recovery_of_one_node_keeps_another_nodes_markers(tmp_path: Path) -> None:
    """Node b's commit is half done (a committed, b still prepared) and its markers are
    old; node a's recovery must not purge them, or b's recovery later reports the
    committed branch as lost (a false heuristic)."""
    urls = sqlite_bank(tmp_path, "a", "b")
    log = log_url(tmp_path)

    async def body() -> None:
        async with await TransactionCoordinator.open(
            urls, log=log, node="node-b", on_event=stop_at("decided")
        ) as crashed:
            with pytest.raises(Stop):
                await transfer(crashed, 0, list(urls))
        half = await recover_transactions({"a": urls["a"]}, log, node="node-b")
        assert len(half["committed"]) == 1 and not half["resolved"]  # b is not configured
        async with await TransactionCoordinator.open(
            urls, log=log, node="node-b", recover=False
        ) as live_b:
            _age_markers(urls, 7200)
            async with await TransactionCoordinator.open(urls, log=log, node="node-a"):
                pass  # its recovery at open purges old markers: only its own
            report = await live_b.recover()
            assert report.heuristics == [], report.heuristics

    asyncio.run(body())
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {"t0"}


# -- 4. a caller cancelled in phase 2 -----------------------------------------------------


def test_cancelled_in_phase_two_the_transaction_completes_and_sqlite_is_not_wedged(
    tmp_path: Path,
) -> None:
    urls = sqlite_bank(tmp_path, "a", "b")
    log = log_url(tmp_path)

    async def body() -> None:
        caller: list[asyncio.Task[None]] = []

        def on_event(event: str, xid: Xid, name: str) -> None:
            if event == "decided" and caller:
                caller.pop().cancel()  # the client went away (a disconnect, a timeout)

        async with await TransactionCoordinator.open(
            urls, log=log, node="cancel", on_event=on_event
        ) as coordinator:
            task = asyncio.ensure_future(transfer(coordinator, 0, list(urls)))
            caller.append(task)
            with pytest.raises(asyncio.CancelledError):
                await task
            await transfer(coordinator, 1, list(urls))  # the participants still work

    asyncio.run(body())
    assert nothing_in_doubt(urls, "cancel")
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {"t0", "t1"}


def test_a_sqlite_connection_never_goes_back_inside_a_transaction(tmp_path: Path) -> None:
    async def body() -> None:
        store = await open_store(f"sqlite:///{tmp_path / 'x.db'}", model="relational")
        assert isinstance(store, RelationalStore)
        try:
            await store.execute("CREATE TABLE t (x INT)")
            async with store.connection() as conn:
                await conn.execute("BEGIN IMMEDIATE")  # a plain statement, not transaction()
                await conn.execute("INSERT INTO t (x) VALUES (1)")
            async with store.transaction() as tx:  # fails if the lease came back in one
                await tx.execute("INSERT INTO t (x) VALUES (2)")
            assert await store.fetch_val("SELECT group_concat(x) FROM t") == "2"
        finally:
            await store.close()

    asyncio.run(body())


# -- 5. a prepared SQLite branch is a promise ---------------------------------------------

_ORDERS = "CREATE TABLE orders (id INTEGER PRIMARY KEY, who TEXT NOT NULL);"
_PAYMENTS = "CREATE TABLE payments (order_id INT NOT NULL, cents INT NOT NULL);"


def test_a_sqlite_replay_that_would_change_other_rows_is_a_hazard(tmp_path: Path) -> None:
    """The order got rowid 1 and the payment names order 1. After the crash another
    writer takes rowid 1: replaying the INSERT would give the order rowid 2 (the payment
    would name another user's order). Recovery reports a hazard, keeps the intent and
    applies nothing of it."""
    urls = {name: f"sqlite:///{tmp_path / name}.db" for name in ("shop", "pay")}
    log = log_url(tmp_path)

    async def body() -> None:
        async with await TransactionCoordinator.open(
            urls, log=log, node="promise", on_event=stop_at("decided")
        ) as coordinator:
            await coordinator.participants["shop"].execute_script(_ORDERS)
            await coordinator.participants["pay"].execute_script(_PAYMENTS)
            with pytest.raises(Stop):
                async with coordinator.transaction(["shop", "pay"]) as tx:
                    await tx.sql("shop").execute("INSERT INTO orders (who) VALUES ('alice')")
                    order = await tx.sql("shop").fetch_val("SELECT last_insert_rowid()")
                    assert order == 1
                    await tx.sql("pay").execute(
                        "INSERT INTO payments (order_id, cents) VALUES (:o, 500)", {"o": order}
                    )
        db = sqlite3.connect(tmp_path / "shop.db")
        with db:
            db.execute("INSERT INTO orders (who) VALUES ('bob')")  # takes rowid 1
        db.close()
        report = await recover_transactions(urls, log)
        hazards = [h for h in report["heuristics"] if h["hazard"]]
        assert [(h["participant"], h["decision"]) for h in hazards] == [("shop", "commit")]
        assert "row 1 of orders" in hazards[0]["detail"]
        assert "kept" in hazards[0]["detail"]
        assert not report["resolved"] and report["pending"]
        assert len(in_doubt(urls, "promise")["shop"]) == 1  # the intent is kept

    asyncio.run(body())
    db = sqlite3.connect(tmp_path / "shop.db")
    assert db.execute("SELECT id, who FROM orders").fetchall() == [(1, "bob")]
    db.close()


_T = "CREATE TABLE t (x INT)"


def test_one_bad_sqlite_intent_does_not_block_the_others(tmp_path: Path) -> None:
    """Two intents on one participant: the first (decided commit) cannot be replayed (a
    unique key another writer took); the second (never decided) must still be rolled
    back in the same pass, and the participant is not reported unreachable."""
    urls = {name: f"sqlite:///{tmp_path / name}.db" for name in ("stock", "other")}
    log = log_url(tmp_path)

    async def crash(node: str, event: str, sku: str) -> None:
        async with await TransactionCoordinator.open(
            urls, log=log, node=node, on_event=stop_at(event), recover=False
        ) as coordinator:
            with pytest.raises(Stop):
                async with coordinator.transaction(["stock", "other"]) as tx:
                    await tx.sql("stock").execute("INSERT INTO skus (sku) VALUES (:s)", {"s": sku})
                    await tx.sql("other").execute("INSERT INTO t (x) VALUES (1)")

    async def body() -> None:
        for name, ddl in [("stock", "CREATE TABLE skus (sku TEXT UNIQUE)"), ("other", _T)]:
            participant = await open_participant(name, urls[name])
            await participant.execute_script(ddl)
            await participant.close()
        await crash("bad", "decided", "x")  # prepared, decided commit
        await crash("bad2", "prepared", "z")  # prepared, never decided
        db = sqlite3.connect(tmp_path / "stock.db")
        with db:
            db.execute("INSERT INTO skus (sku) VALUES ('x')")  # the unique key the replay needs
        db.close()
        report = await recover_transactions(urls, log)
        assert "stock" not in report["unreachable"]
        hazards = [h for h in report["heuristics"] if h["hazard"]]
        assert [h["participant"] for h in hazards] == ["stock"]
        assert "UNIQUE" in hazards[0]["detail"]
        assert any(b.endswith(":stock") and ":bad2." in b for b in report["rolled_back"])
        assert in_doubt(urls, "bad2") == {"stock": [], "other": []}

    asyncio.run(body())


# -- 6. what the review reported without a reproduction -----------------------------------


def test_an_unexpected_error_in_prepare_aborts_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver bug (not a multistore error) after a branch prepared: the transaction is
    rolled back everywhere and the caller gets the definite TransactionAbortedError."""
    urls = sqlite_bank(tmp_path, "a", "b")
    prepare = SQLiteBranch.prepare

    async def buggy(self: SQLiteBranch) -> Any:
        vote = await prepare(self)
        if self.name == "b":
            raise RuntimeError("driver bug")
        return vote

    monkeypatch.setattr(SQLiteBranch, "prepare", buggy)

    async def body() -> None:
        async with await TransactionCoordinator.open(
            urls, log=log_url(tmp_path), node="bug"
        ) as coordinator:
            with pytest.raises(TransactionAbortedError, match="RuntimeError: driver bug") as caught:
                await transfer(coordinator, 0, list(urls))
            assert caught.value.definite
            assert nothing_in_doubt(urls, "bug")  # rolled back now, not left to recovery

    asyncio.run(body())
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == set()


def test_an_unexpected_error_in_phase_two_is_indeterminate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls = sqlite_bank(tmp_path, "a", "b")
    commit = SQLiteBranch.commit

    async def buggy(self: SQLiteBranch, *, one_phase: bool = False) -> bool:
        if self.name == "b":
            raise RuntimeError("driver bug")
        return await commit(self, one_phase=one_phase)

    monkeypatch.setattr(SQLiteBranch, "commit", buggy)

    async def body() -> None:
        async with await TransactionCoordinator.open(
            urls, log=log_url(tmp_path), node="bug2"
        ) as coordinator:
            with pytest.raises(TransactionIndeterminateError, match="driver bug") as caught:
                await transfer(coordinator, 0, list(urls))
            assert caught.value.pending == ("b",)
        monkeypatch.setattr(SQLiteBranch, "commit", commit)
        report = await recover_transactions(urls, log_url(tmp_path))
        assert report["resolved"] and report["heuristics"] == []

    asyncio.run(body())
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {"t0"}


@pytest.mark.server
def test_a_branch_committed_elsewhere_as_decided_is_no_heuristic(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    """Phase 2 finds its prepared branch gone because it was committed — as when the
    answer to a first COMMIT PREPARED was lost and the retry finds nothing. The commit
    marker says it committed: no heuristic is reported."""
    urls = {"pg": postgres_url, "lite": f"sqlite:///{tmp_path / 'lite.db'}"}
    asyncio.run(create_bank(urls))

    def on_event(event: str, xid: Xid, name: str) -> None:
        if event == "decided":
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute(f"COMMIT PREPARED '{xid.for_branch('pg')}'")

    async def body() -> None:
        async with await TransactionCoordinator.open(
            urls, log=log_url(tmp_path), node="lost-reply", on_event=on_event
        ) as coordinator:
            await transfer(coordinator, 0, list(urls))  # no TransactionHeuristicError

    asyncio.run(body())
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {"t0"}


@pytest.mark.server
def test_two_participants_on_one_postgres_database_list_only_their_own_branches(
    postgres_url: str, tmp_path: Path
) -> None:
    urls = {"p1": postgres_url, "p2": postgres_url, "lite": f"sqlite:///{tmp_path / 'l.db'}"}
    asyncio.run(create_bank({"p1": postgres_url, "lite": urls["lite"]}))

    async def body() -> None:
        async with await TransactionCoordinator.open(
            urls, log=log_url(tmp_path), node="shared", on_event=stop_at("decided")
        ) as coordinator:
            with pytest.raises(Stop):
                async with coordinator.transaction(list(urls)) as tx:
                    await tx.sql("p1").execute(
                        "UPDATE accounts SET balance = balance - 1 WHERE id = 0"
                    )
                    await tx.sql("p2").execute(
                        "UPDATE accounts SET balance = balance + 1 WHERE id = 1"
                    )
                    await tx.sql("lite").execute("UPDATE accounts SET balance = 7 WHERE id = 0")
        p1 = await open_participant("p1", postgres_url)
        try:
            assert [x.branch for x in await p1.in_doubt()] == ["p1"]
        finally:
            await p1.close()
        report = await recover_transactions(urls, log_url(tmp_path))
        assert report["resolved"] and report["heuristics"] == [], report
        assert len(report["committed"]) == 3

    asyncio.run(body())


# -- background recovery ------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], *, within: float, what: str) -> None:
    """Poll ``condition`` (a blocking check, run off the loop) until true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await asyncio.to_thread(condition):
        if loop.time() > deadline:
            raise TimeoutError(f"not within {within:g} s: {what}")
        await asyncio.sleep(0.1)


@pytest.mark.server
def test_a_live_coordinator_recovers_its_phase_two_failure_in_the_background(
    postgres_server: PostgresServer,
    postgres_url: str,
    tcp_proxy: Callable[[str, int], TcpProxy],
    tmp_path: Path,
) -> None:
    """PostgreSQL is cut off in phase 2: the app is told it is indeterminate, the branch
    stays prepared and holds its row lock. Once PostgreSQL is reachable again the live
    coordinator commits it by itself (nobody runs recover), and its close stops that."""
    proxy = tcp_proxy("127.0.0.1", postgres_server.port)
    database = postgres_url.rsplit("/", 1)[1]
    direct = {"pg": postgres_url, "lite": f"sqlite:///{tmp_path / 'lite.db'}"}
    urls = {**direct, "pg": f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}"}
    asyncio.run(create_bank(direct))

    def on_event(event: str, xid: Xid, name: str) -> None:
        if event == "decided":
            proxy.cut()

    async def body() -> None:
        coordinator = await TransactionCoordinator.open(
            urls, log=log_url(tmp_path), node="bg", on_event=on_event, recover_interval=0.2
        )
        try:
            with pytest.raises(TransactionIndeterminateError):
                await transfer(coordinator, 0, list(urls))
            assert in_doubt(direct, "bg")["pg"]  # prepared, holding its lock
            proxy.restore()
            await wait_until(
                lambda: nothing_in_doubt(direct, "bg"), within=60, what="background recovery"
            )
        finally:
            await coordinator.close()
        assert asyncio.all_tasks() == {asyncio.current_task()}  # nothing left running

    asyncio.run(body())
    assert assert_all_or_nothing(asyncio.run(snapshot(direct))) == {"t0"}
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # the row lock is gone
        conn.execute("SET lock_timeout = '10s'")
        conn.execute("UPDATE accounts SET balance = balance WHERE id = 0")


def test_a_coordinator_whose_lease_was_taken_over_starts_no_transaction(
    tmp_path: Path,
) -> None:
    """Paused longer than its lease, a coordinator finds its node taken by another
    process: it refuses new transactions rather than share the node id."""
    urls = sqlite_bank(tmp_path, "a", "b")
    log = log_url(tmp_path)

    async def body() -> None:
        async with await TransactionCoordinator.open(
            urls, log=log, node="paused", lease_ttl=0.6, recover_interval=None
        ) as coordinator:
            await transfer(coordinator, 0, list(urls))
            other = await DecisionLog.open(log)
            try:
                expire_lease(str(tmp_path / "log.db"), "paused")
                assert await other.nodes.acquire("paused", "someone else", 60.0)
            finally:
                await other.close()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            for n in itertools.count(1):  # the next renewal (every 0.2 s) finds it gone
                try:
                    await transfer(coordinator, n, list(urls))
                except NodeBusyError as exc:
                    assert "lost its lease" in str(exc)
                    break
                assert loop.time() < deadline, "the lost lease was not noticed"
                await asyncio.sleep(0.05)

    asyncio.run(body())


def test_a_coordinators_own_recovery_leaves_a_transaction_that_started_meanwhile(
    tmp_path: Path,
) -> None:
    """The coordinator's recovery pass (background, or recover()) starts; then a
    transaction starts and prepares before the pass lists the in-doubt branches. The
    pass must leave it alone: it commits, not 'a recovery manager decided abort first'."""
    urls = sqlite_bank(tmp_path, "a", "b")

    async def body() -> None:
        async with await TransactionCoordinator.open(
            urls, log=log_url(tmp_path), node="own", recover_interval=None
        ) as coordinator:
            log = coordinator.log
            gate = asyncio.Event()
            started: list[asyncio.Task[None]] = []
            records, log_commit, purge_aborts = log.records, log.log_commit, log.purge_aborts

            async def open_the_gate(older_than: float) -> int:
                gate.set()  # the pass has resolved what it listed: let the decision come
                return await purge_aborts(older_than)

            async def held_commit(xid: Xid, participants: Any) -> None:
                await gate.wait()  # decided only after the recovery pass
                await log_commit(xid, participants)

            async def records_after_a_prepare(node: str | None = None) -> Any:
                if not started:
                    started.append(asyncio.ensure_future(transfer(coordinator, 0, list(urls))))
                    await wait_until(
                        lambda: all(in_doubt(urls, "own").values()), within=30, what="prepare"
                    )
                return await records(node)

            log.log_commit = held_commit  # type: ignore[method-assign]
            log.records = records_after_a_prepare  # type: ignore[method-assign]
            log.purge_aborts = open_the_gate  # type: ignore[method-assign]
            report = await coordinator.recover()
            assert report.rolled_back == []
            await started[0]  # committed, not aborted by its own coordinator's recovery

    asyncio.run(body())
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {"t0"}


def test_close_stops_a_background_recovery_that_lost_its_cancellation(tmp_path: Path) -> None:
    """On Python 3.11 ``asyncio.wait_for`` returns its result instead of raising when a
    cancel comes just as the awaited call finishes; redis-py wraps every command it
    sends in one, so a background recovery pass can lose the cancel of ``close()``. The
    pass must still end and ``close()`` return, not wait for it forever."""
    urls = sqlite_bank(tmp_path, "a", "b")

    async def body() -> None:
        coordinator = await TransactionCoordinator.open(
            urls, log=log_url(tmp_path), node="lost", recover_interval=0.05
        )
        participant = coordinator.participants["a"]
        purge_markers = participant.purge_markers
        in_pass = asyncio.Event()
        lost: list[BaseException] = []

        async def losing_the_cancel(*args: Any) -> int:
            if not lost:
                in_pass.set()
                try:
                    await asyncio.Event().wait()  # until close() cancels the pass
                except asyncio.CancelledError as exc:
                    lost.append(exc)  # dropped, as that wait_for drops it
            return await purge_markers(*args)

        participant.purge_markers = losing_the_cancel  # type: ignore[method-assign]
        async with asyncio.timeout(30):
            await in_pass.wait()
        closing = asyncio.ensure_future(coordinator.close())
        await asyncio.wait({closing}, timeout=30)  # a bound on a hang, not a speed check
        if not closing.done():
            closing.cancel()  # (its own cancel reaches the pass: cleans up)
            await asyncio.wait({closing}, timeout=30)
            pytest.fail("close() waits for a background recovery that lost its cancel")
        await closing
        assert len(lost) == 1
        assert asyncio.all_tasks() == {asyncio.current_task()}  # the keepers ended

    asyncio.run(body())
