"""Two-phase commit across real PostgreSQL, MariaDB, SQLite and Redis participants."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import cast

import psycopg
import pytest
import redis

from multistore.consistency import (
    NodeBusyError,
    TransactionAbortedError,
    TransactionCoordinator,
    TransactionIndeterminateError,
    open_participant,
    recover_transactions,
)
from multistore.core._tpc import TxState, Vote, Xid
from multistore.errors import MultistoreError
from multistore.lab.proxy import TcpProxy
from multistore.lab.servers import MariaDBServer, PostgresServer
from multistore.service import (
    OrderLine,
    OutOfStockError,
    create_tables,
    order_input,
    place_order_atomically,
    stock_products,
)
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore
from tests.consistency.bank import (
    START,
    assert_all_or_nothing,
    create_bank,
    log_url,
    snapshot,
    transfer,
)
from tests.consistency.checks import (
    decision_records,
    expire_lease,
    in_doubt,
    log_records,
    nothing_in_doubt,
)

pytestmark = pytest.mark.server


def test_transfers_across_four_databases_keep_the_sum(bank: dict[str, str], tmp_path: Path) -> None:
    async def body() -> None:
        async with await TransactionCoordinator.open(
            bank, log=log_url(tmp_path), node="sum"
        ) as coordinator:
            for n in range(5):
                await transfer(coordinator, n, list(bank))
                snap = await snapshot(bank)
                assert snap["total"] == snap["expected"]

    asyncio.run(body())
    snap = asyncio.run(snapshot(bank))
    assert assert_all_or_nothing(snap) == {f"t{n}" for n in range(5)}
    assert nothing_in_doubt(bank, "sum")
    assert log_records(str(tmp_path / "log.db")) == []  # commit records are forgotten


def test_single_participant_commits_in_one_phase(bank: dict[str, str], tmp_path: Path) -> None:
    events: list[str] = []

    async def body() -> None:
        async with await TransactionCoordinator.open(
            {"pg1": bank["pg1"]},
            log=log_url(tmp_path),
            node="one",
            on_event=lambda event, xid, name: events.append(event),
        ) as coordinator:
            async with coordinator.transaction(["pg1"]) as tx:
                await tx.sql("pg1").execute("UPDATE accounts SET balance = 5 WHERE id = 0")
            assert tx.state is TxState.COMMITTED
            assert await _balance(bank["pg1"], 0) == 5

    asyncio.run(body())
    assert events == []  # no prepare, no logged decision
    assert log_records(str(tmp_path / "log.db")) == []


def test_read_only_participant_skips_phase_two(bank: dict[str, str], tmp_path: Path) -> None:
    events: list[tuple[str, str]] = []
    logged: list[list[tuple[str, str]]] = []
    log_path = str(tmp_path / "log.db")

    def on_event(event: str, xid: Xid, name: str) -> None:
        events.append((event, name))
        if event == "decided":
            logged.append(log_records(log_path))

    async def body() -> None:
        async with await TransactionCoordinator.open(
            bank, log=log_url(tmp_path), node="ro", on_event=on_event
        ) as coordinator:
            async with coordinator.transaction(["pg1", "pg2", "maria"]) as tx:
                assert await tx.sql("pg1").fetch_val("SELECT sum(balance) FROM accounts") == 3000
                await tx.sql("pg2").execute(
                    "UPDATE accounts SET balance = balance - 1 WHERE id = 1"
                )
                await tx.sql("maria").execute(
                    "UPDATE accounts SET balance = balance + 1 WHERE id = 1"
                )
            assert tx.votes == {"pg1": Vote.READ_ONLY, "pg2": Vote.YES, "maria": Vote.YES}

    asyncio.run(body())
    assert sorted(name for event, name in events if event == "committed") == ["maria", "pg2"]
    # the commit decision was on disk when phase 2 began (two prepared branches)
    assert len(logged) == 1 and [d for _, d in logged[0]] == ["commit"]
    assert nothing_in_doubt(bank, "ro")


def test_participant_refusing_prepare_aborts_everything(
    bank: dict[str, str], tmp_path: Path
) -> None:
    async def body() -> None:
        pg2 = cast(RelationalStore, await open_store(bank["pg2"], model="relational"))
        await pg2.execute(
            "CREATE TABLE seen (k INT, CONSTRAINT seen_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)"
        )
        await pg2.execute("INSERT INTO seen (k) VALUES (1)")
        await pg2.close()
        async with await TransactionCoordinator.open(
            bank, log=log_url(tmp_path), node="refuse"
        ) as coordinator:
            with pytest.raises(TransactionAbortedError) as caught:
                async with coordinator.transaction(list(bank)) as tx:
                    for name in ("pg1", "maria", "lite"):
                        await tx.sql(name).execute("UPDATE accounts SET balance = 0")
                    tx["redis"].set("transfer:x", "1")
                    # accepted now, refused at PREPARE TRANSACTION (deferred constraint)
                    await tx.sql("pg2").execute("INSERT INTO seen (k) VALUES (1)")
            assert caught.value.definite
            assert "pg2" in caught.value.reasons
            assert tx.state is TxState.ABORTED and tx.votes["pg2"] is Vote.NO

    asyncio.run(body())
    snap = asyncio.run(snapshot(bank))
    assert snap["total"] == snap["expected"] and not any(snap["tids"].values())
    assert nothing_in_doubt(bank, "refuse")


def test_error_in_the_block_rolls_back_every_branch(bank: dict[str, str], tmp_path: Path) -> None:
    async def body() -> None:
        async with await TransactionCoordinator.open(
            bank, log=log_url(tmp_path), node="raise"
        ) as coordinator:
            with pytest.raises(ZeroDivisionError):
                async with coordinator.transaction(list(bank)) as tx:
                    for name in ("pg1", "pg2", "maria", "lite"):
                        await tx.sql(name).execute("UPDATE accounts SET balance = 0")
                    1 / 0  # noqa: B018
            assert tx.state is TxState.ABORTED

    asyncio.run(body())
    snap = asyncio.run(snapshot(bank))
    assert snap["total"] == snap["expected"]
    assert nothing_in_doubt(bank, "raise")


def test_failing_first_statement_and_idle_branches(bank: dict[str, str], tmp_path: Path) -> None:
    """A branch's start (BEGIN, XA START) travels with its first statement: a first
    statement that fails still rolls back everything, and a branch that ran nothing is
    read-only without a transaction on the server."""
    events: list[tuple[str, str]] = []

    async def body() -> None:
        async with await TransactionCoordinator.open(
            bank,
            log=log_url(tmp_path),
            node="first",
            on_event=lambda event, xid, name: events.append((event, name)),
        ) as coordinator:
            for bad in ("pg2", "maria"):
                with pytest.raises(MultistoreError, match="no_such_table"):
                    async with coordinator.transaction(["pg1", "pg2", "maria"]) as tx:
                        others = [n for n in ("pg1", "pg2", "maria") if n != bad]
                        for name in others:
                            await tx.sql(name).execute("UPDATE accounts SET balance = 0")
                        await tx.sql(bad).execute("UPDATE no_such_table SET x = 1")
                assert tx.state is TxState.ABORTED
            assert await _balance(bank["pg1"], 0) != 0
            assert await _balance(bank["maria"], 0) != 0
            async with coordinator.transaction(["pg1", "pg2", "maria"]) as tx:
                await tx.sql("pg1").execute("UPDATE accounts SET balance = 7 WHERE id = 0")
                await tx.sql("maria").execute("UPDATE accounts SET balance = 8 WHERE id = 0")
            assert tx.votes == {"pg1": Vote.YES, "pg2": Vote.READ_ONLY, "maria": Vote.YES}
            assert (await _balance(bank["pg1"], 0), await _balance(bank["maria"], 0)) == (7, 8)
            async with coordinator.transaction(["pg1", "maria"]) as tx:
                pass  # nothing written: both branches read-only
            assert tx.votes == {"pg1": Vote.READ_ONLY, "maria": Vote.READ_ONLY}
            assert tx.state is TxState.COMMITTED

    asyncio.run(body())
    assert sorted(name for event, name in events if event == "committed") == ["maria", "pg1"]
    assert nothing_in_doubt(bank, "first")


def test_postgres_down_between_prepare_and_commit_is_indeterminate_then_recovered(
    bank: dict[str, str], tmp_path: Path, postgres_server: PostgresServer
) -> None:
    urls = {k: bank[k] for k in ("pg1", "maria", "lite")}

    def on_event(event: str, xid: Xid, name: str) -> None:
        if event == "decided":
            postgres_server.stop()

    async def body() -> None:
        async with await TransactionCoordinator.open(
            urls, log=log_url(tmp_path), node="pgdown", on_event=on_event, commit_timeout=5
        ) as coordinator:
            with pytest.raises(TransactionIndeterminateError) as caught:
                await transfer(coordinator, 0, list(urls))
            assert not caught.value.definite
            assert caught.value.pending == ("pg1",)

    try:
        asyncio.run(body())
        assert [d for _, d in log_records(str(tmp_path / "log.db"))] == ["commit"]
        down = asyncio.run(recover_transactions(urls, log_url(tmp_path)))
        assert not down["resolved"] and "pg1" in down["unreachable"]
    finally:
        postgres_server.start()
    assert len(in_doubt(urls, "pgdown")["pg1"]) == 1  # survived the restart, prepared
    report = asyncio.run(recover_transactions(urls, log_url(tmp_path), retry_for=10))
    assert report["resolved"]
    assert [gid.rsplit(":", 1)[1] for gid in report["committed"]] == ["pg1"]
    assert report["heuristics"] == []
    snap = asyncio.run(snapshot(urls))
    assert assert_all_or_nothing(snap) == {"t0"}
    assert nothing_in_doubt(urls, "pgdown")
    assert log_records(str(tmp_path / "log.db")) == []


@pytest.mark.parametrize("last_resource", [False, True], ids=["log", "last-resource"])
def test_concurrent_transfers_on_the_same_rows(
    last_resource: bool,
    postgres_server: PostgresServer,
    mariadb_server: MariaDBServer,
    tmp_path: Path,
) -> None:
    urls = {
        "pg1": postgres_server.create_database() + "?timeout=2",
        "pg2": postgres_server.create_database() + "?timeout=2",
        "maria": mariadb_server.create_database() + "?timeout=2",
    }
    asyncio.run(create_bank(urls))
    node = f"conc{int(last_resource)}"
    outcomes: list[str] = []

    async def one(coordinator: TransactionCoordinator, n: int) -> None:
        names = ["pg1", "pg2", "maria"] if n % 2 else ["maria", "pg2", "pg1"]
        try:
            # every transfer touches account 0 everywhere, in opposite orders
            async with coordinator.transaction(names) as tx:
                for name in names:
                    await tx.sql(name).execute(
                        "UPDATE accounts SET balance = balance + :d WHERE id = 0",
                        {"d": 20 if name == names[0] else -10},
                    )
                    await tx.sql(name).execute(
                        "INSERT INTO transfers (tid, delta) VALUES (:t, 0)", {"t": f"t{n}"}
                    )
            outcomes.append("committed")
        except MultistoreError as exc:
            assert exc.definite, exc  # a lock timeout aborts cleanly, never "unknown"
            outcomes.append("aborted")

    async def body() -> None:
        async with await TransactionCoordinator.open(
            urls, log=log_url(tmp_path), node=node, prepare_timeout=5, last_resource=last_resource
        ) as coordinator:
            # Every transfer ends (the statement timeouts break a distributed deadlock;
            # a hang would hit pytest's timeout) and each one is accounted for below.
            await asyncio.gather(*(one(coordinator, n) for n in range(8)))

    asyncio.run(body())
    assert len(outcomes) == 8 and "committed" in outcomes
    snap = asyncio.run(snapshot(urls))
    committed = assert_all_or_nothing(snap)  # no lost update: the sum holds
    assert len(committed) == outcomes.count("committed")
    assert snap["total"] == 3 * 3 * START
    assert nothing_in_doubt(urls, node)


async def _balance(url: str, account: int) -> int:
    store = cast(RelationalStore, await open_store(url, model="relational"))
    try:
        return int(
            await store.fetch_val("SELECT balance FROM accounts WHERE id = :id", {"id": account})
        )
    finally:
        await store.close()


def test_seed_order_payment_inventory_transaction(
    postgres_url: str, mariadb_url: str, tmp_path: Path
) -> None:
    roles = {
        "orders": postgres_url,
        "payments": mariadb_url,
        "inventory": f"sqlite:///{tmp_path / 'inventory.db'}",
    }

    async def body() -> None:
        async with await TransactionCoordinator.open(
            roles, log=log_url(tmp_path), node="shop"
        ) as coordinator:
            await create_tables(coordinator)
            await stock_products(coordinator, {"product1": (4999, 1), "product2": (5000, 5)})
            lines = [OrderLine("product1", 1, 4999), OrderLine("product2", 1, 5000)]
            tx = await place_order_atomically(coordinator, order_input("ord_123", "u", lines))
            assert tx.state is TxState.COMMITTED
            with pytest.raises(OutOfStockError):  # product1 is sold out: nothing is written
                await place_order_atomically(
                    coordinator,
                    order_input(
                        "ord_124",
                        "u",
                        [OrderLine("product2", 1, 5000), OrderLine("product1", 1, 4999)],
                    ),
                )
        for role, sql, expected in [
            ("orders", "SELECT id, total_cents FROM shop_orders", [("ord_123", 9999)]),
            ("payments", "SELECT order_id, amount_cents FROM shop_payments", [("ord_123", 9999)]),
            (
                "inventory",
                "SELECT sku, stock FROM shop_stock ORDER BY sku",
                [("product1", 0), ("product2", 4)],
            ),
        ]:
            store = cast(RelationalStore, await open_store(roles[role], model="relational"))
            try:
                assert [r.as_tuple() for r in await store.fetch_all(sql)] == expected
            finally:
                await store.close()

    asyncio.run(body())
    assert nothing_in_doubt(roles, "shop")


@pytest.mark.parametrize("last_resource", [False, True], ids=["log", "last-resource"])
def test_recovery_abort_wins_over_a_late_commit_decision(
    last_resource: bool, bank: dict[str, str], tmp_path: Path
) -> None:
    """Recovery run while a coordinator is between prepare and its decision, after the
    coordinator's lease ran out (it was paused): the abort recovery logs first makes the
    coordinator's commit record fail, so the coordinator aborts. With a last resource
    (pg1) the abort goes into pg1's table, where the last resource's own record then hits
    the duplicate key."""
    urls = {k: bank[k] for k in ("pg1", "pg2", "lite")}
    prepared = {k: urls[k] for k in (("pg2", "lite") if last_resource else urls)}
    reports: list[dict[str, object]] = []

    def on_event(event: str, xid: Xid, name: str) -> None:
        if event == "prepared" and not reports and all(in_doubt(prepared, "late").values()):
            expire_lease(str(tmp_path / "log.db"), "late")
            box: list[dict[str, object]] = []
            thread = threading.Thread(
                target=lambda: box.append(
                    asyncio.run(recover_transactions(urls, log_url(tmp_path), node="late"))
                )
            )
            thread.start()
            thread.join()
            reports.extend(box)

    async def body() -> None:
        async with await TransactionCoordinator.open(
            urls, log=log_url(tmp_path), node="late", on_event=on_event, last_resource=last_resource
        ) as coordinator:
            with pytest.raises(TransactionAbortedError, match="decided abort first"):
                await transfer(coordinator, 0, list(urls))

    asyncio.run(body())
    assert len(reports) == 1
    assert len(reports[0]["rolled_back"]) == len(prepared)  # type: ignore[arg-type]
    if last_resource:
        assert [d for _, d in decision_records(urls["pg1"])] == ["abort"]
    else:
        assert [d for _, d in log_records(str(tmp_path / "log.db"))] == ["abort"]
    snap = asyncio.run(snapshot(urls))
    assert assert_all_or_nothing(snap) == set()
    assert nothing_in_doubt(urls, "late")


def test_coordinator_recovers_its_node_when_it_starts(bank: dict[str, str], tmp_path: Path) -> None:
    """A starting coordinator recovers its own node, and nodes nobody holds; a node whose
    coordinator is alive is left to it, and its id cannot be taken twice."""
    urls = {k: bank[k] for k in ("pg1", "maria", "lite", "redis")}

    class Crash(BaseException):
        """The coordinator stops here (raised from an event hook)."""

    def on_event(event: str, xid: Xid, name: str) -> None:
        if event == "decided":
            raise Crash  # leaves every branch prepared, with the commit decision logged

    async def body() -> None:
        crashed = await TransactionCoordinator.open(
            urls, log=log_url(tmp_path), node="restart", on_event=on_event, recover_interval=None
        )
        try:
            with pytest.raises(Crash):
                await transfer(crashed, 0, list(urls))
            assert all(in_doubt(urls, "restart").values())
            async with await TransactionCoordinator.open(
                urls, log=log_url(tmp_path), node="other"
            ) as other:
                assert other.last_recovery is not None
                assert "restart" in other.last_recovery.skipped  # alive: left alone
            assert all(in_doubt(urls, "restart").values())
            with pytest.raises(NodeBusyError, match="node 'restart' is held by a live"):
                await TransactionCoordinator.open(
                    urls, log=log_url(tmp_path), node="restart", node_wait=0
                )
        finally:
            await crashed.close()  # its lease is free now
        async with await TransactionCoordinator.open(urls, log=log_url(tmp_path), node="restart"):
            pass  # opening it is the recovery of its own branches

    asyncio.run(body())
    assert nothing_in_doubt(urls, "restart")
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {"t0"}


def test_two_coordinators_share_a_postgres_log(
    bank: dict[str, str], postgres_server: PostgresServer, tmp_path: Path
) -> None:
    urls = {k: bank[k] for k in ("pg1", "pg2", "maria")}
    log = postgres_server.create_database()

    async def run_node(node: str, first: int) -> None:
        async with await TransactionCoordinator.open(urls, log=log, node=node) as coordinator:
            for n in range(first, first + 3):
                await transfer(coordinator, n, list(urls))

    async def body() -> None:
        await asyncio.gather(run_node("a", 0), run_node("b", 10))

    asyncio.run(body())
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {
        f"t{n}" for n in (0, 1, 2, 10, 11, 12)
    }
    rows = postgres_server.execute(
        "SELECT count(*) FROM multistore_tpc_log", database=log.rsplit("/", 1)[1]
    )
    assert rows == [(0,)]


def test_redis_branch_is_guarded_by_reads_and_locks(bank: dict[str, str], tmp_path: Path) -> None:
    urls = {k: bank[k] for k in ("lite", "redis")}
    client = redis.Redis.from_url(bank["redis"])
    client.set("stock", "5")

    class Crash(BaseException):
        """The coordinator dies here (raised from an event hook)."""

    def on_event(event: str, xid: Xid, name: str) -> None:
        if event == "decided":
            raise Crash  # leaves both branches prepared

    async def body() -> None:
        async with await TransactionCoordinator.open(
            urls, log=log_url(tmp_path), node="guard", on_event=on_event
        ) as coordinator:
            # a value read in the transaction changed before prepare: refused
            with pytest.raises(TransactionAbortedError, match="changed since read: stock"):
                async with coordinator.transaction(list(urls)) as tx:
                    assert await tx["redis"].get("stock") == "5"
                    client.set("stock", "4")
                    tx["redis"].set("stock", "4")
                    await tx.sql("lite").execute("UPDATE accounts SET balance = 0")
            # a key held by a prepared branch cannot be prepared by another one
            with pytest.raises(Crash):
                await transfer(coordinator, 0, list(urls))
            coordinator.on_event = None
            with pytest.raises(
                TransactionAbortedError, match=r"locked by ms2pc:guard\.[0-9a-f]{10}:"
            ):
                async with coordinator.transaction(list(urls)) as tx:
                    tx["redis"].set("transfer:t0", "other")
                    await tx.sql("lite").execute("UPDATE accounts SET balance = 0")

    asyncio.run(body())
    assert client.get("stock") == b"4" and client.get("transfer:t0") is None
    report = asyncio.run(recover_transactions(urls, log_url(tmp_path), node="guard"))
    assert len(report["committed"]) == 2
    assert client.get("transfer:t0") == b"1"
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {"t0"}
    assert nothing_in_doubt(urls, "guard")
    client.close()


def test_participant_slower_than_the_prepare_timeout_aborts_the_transaction(
    bank: dict[str, str],
    tmp_path: Path,
    postgres_server: PostgresServer,
    tcp_proxy: Callable[[str, int], TcpProxy],
) -> None:
    proxy = tcp_proxy("127.0.0.1", postgres_server.port)
    database = bank["pg2"].rsplit("/", 1)[1]
    urls = {
        "pg1": bank["pg1"],
        "slow": f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}",
        "lite": bank["lite"],
    }

    def on_event(event: str, xid: Xid, name: str) -> None:
        if event == "preparing":
            # The slow participant would answer prepare ten minutes late: a coordinator
            # that waited for it instead of its 0.5 s prepare timeout would run into
            # pytest's timeout rather than raise below.
            proxy.delay(600.0)

    async def body() -> None:
        async with await TransactionCoordinator.open(
            urls,
            log=log_url(tmp_path),
            node="slow",
            on_event=on_event,
            prepare_timeout=0.5,
            commit_timeout=2,
        ) as coordinator:
            with pytest.raises(TransactionAbortedError) as caught:
                await transfer(coordinator, 0, list(urls))
            assert caught.value.definite
            assert "no answer to prepare within 0.5 s" in caught.value.reasons["slow"]
            assert set(caught.value.reasons) == {"slow"}  # the others voted yes
            # the participants that answered were rolled back, not left prepared
            assert in_doubt({k: urls[k] for k in ("pg1", "lite")}, "slow") == {
                "pg1": [],
                "lite": [],
            }
            # the late prepare is still on its way: the slow participant's connection
            # dies with it (dropped by the proxy), which rolls its branch back
            proxy.cut()
        proxy.restore()

    asyncio.run(body())
    report = asyncio.run(recover_transactions(urls, log_url(tmp_path), node="slow"))
    assert report["resolved"] and report["committed"] == []
    assert nothing_in_doubt(urls, "slow")
    snap = asyncio.run(snapshot(urls))
    assert snap["total"] == snap["expected"] and not any(snap["tids"].values())
    # the slow branch holds no lock any more: another session updates its row at once
    with psycopg.connect(bank["pg2"], autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute("UPDATE accounts SET balance = balance WHERE id = 0")


def test_branch_rolled_back_by_hand_is_reported_as_a_heuristic_outcome(
    bank: dict[str, str], tmp_path: Path, postgres_server: PostgresServer
) -> None:
    urls = {k: bank[k] for k in ("pg1", "pg2", "lite", "redis")}

    class Crash(BaseException):
        """The coordinator dies here (raised from an event hook)."""

    def on_event(event: str, xid: Xid, name: str) -> None:
        if event == "decided":
            raise Crash  # every branch prepared, the commit decision logged

    async def crashed() -> None:
        async with await TransactionCoordinator.open(
            urls, log=log_url(tmp_path), node="heur", on_event=on_event
        ) as coordinator:
            with pytest.raises(Crash):
                await transfer(coordinator, 0, list(urls))

    asyncio.run(crashed())
    [gid] = in_doubt(urls, "heur")["pg2"]
    # an operator "resolves" the in-doubt branch by hand, against the decision
    postgres_server.execute(f"ROLLBACK PREPARED '{gid}'", database=bank["pg2"].rsplit("/", 1)[1])

    report = asyncio.run(recover_transactions(urls, log_url(tmp_path), node="heur"))
    assert [(h["participant"], h["decision"]) for h in report["heuristics"]] == [("pg2", "commit")]
    assert gid.startswith(report["heuristics"][0]["gtrid"])
    assert sorted(b.rsplit(":", 1)[1] for b in report["committed"]) == ["lite", "pg1", "redis"]
    assert nothing_in_doubt(urls, "heur")
    snap = asyncio.run(snapshot(urls))
    assert snap["tids"]["pg2"] == set() and snap["tids"]["pg1"] == {"t0"}  # the damage is real

    async def markers() -> None:
        participant = await open_participant("pg1", urls["pg1"])
        try:
            branch = Xid.parse(gid).for_branch("pg1")
            assert await participant.committed(branch) is True
            assert await participant.purge_markers(0.0, {str(branch)}, lambda x: True) == 0
            assert await participant.purge_markers(0.0, set(), lambda x: False) == 0  # not ours
            assert await participant.purge_markers(0.0, set(), lambda x: True) == 1
            assert await participant.committed(branch) is False
        finally:
            await participant.close()

    asyncio.run(markers())


def test_sqlite_write_through_a_fetch_is_part_of_the_replayed_write_set(
    bank: dict[str, str], tmp_path: Path
) -> None:
    urls = {k: bank[k] for k in ("pg1", "lite")}

    class Crash(BaseException):
        """The coordinator dies here (raised from an event hook)."""

    def on_event(event: str, xid: Xid, name: str) -> None:
        if event == "decided":
            raise Crash  # SQLite's open transaction is dropped; only its intent is left

    async def crashed() -> None:
        async with await TransactionCoordinator.open(
            urls, log=log_url(tmp_path), node="ret", on_event=on_event
        ) as coordinator:
            with pytest.raises(Crash):
                async with coordinator.transaction(list(urls)) as tx:
                    await tx.sql("pg1").execute("UPDATE accounts SET balance = balance + 5")
                    rows = await tx.sql("lite").fetch_all(
                        "UPDATE accounts SET balance = balance - 5 RETURNING balance"
                    )
                    assert [r["balance"] for r in rows] == [START - 5] * 3

    asyncio.run(crashed())
    assert asyncio.run(_balance(bank["lite"], 0)) == START  # not applied yet
    report = asyncio.run(recover_transactions(urls, log_url(tmp_path), node="ret"))
    assert len(report["committed"]) == 2
    assert asyncio.run(_balance(bank["lite"], 0)) == START - 5
    assert asyncio.run(_balance(bank["pg1"], 0)) == START + 5


def test_mariadb_down_between_prepare_and_commit_is_recovered(
    bank: dict[str, str], tmp_path: Path, mariadb_server: MariaDBServer
) -> None:
    urls = {k: bank[k] for k in ("pg1", "maria")}

    def on_event(event: str, xid: Xid, name: str) -> None:
        if event == "decided":
            mariadb_server.stop()

    async def body() -> None:
        async with await TransactionCoordinator.open(
            urls, log=log_url(tmp_path), node="mdown", on_event=on_event, commit_timeout=5
        ) as coordinator:
            with pytest.raises(TransactionIndeterminateError) as caught:
                await transfer(coordinator, 0, list(urls))
            assert caught.value.pending == ("maria",)

    try:
        asyncio.run(body())
    finally:
        mariadb_server.start()
    assert len(in_doubt(urls, "mdown")["maria"]) == 1  # XA PREPARE survived the restart
    report = asyncio.run(recover_transactions(urls, log_url(tmp_path), retry_for=10))
    assert report["resolved"] and report["heuristics"] == []
    assert [b.rsplit(":", 1)[1] for b in report["committed"]] == ["maria"]
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {"t0"}
    assert nothing_in_doubt(urls, "mdown")


def test_prepares_and_commits_run_on_every_branch_at_once(
    bank: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Phase 1 and phase 2 fan out: each branch's prepare (and then its commit) waits
    until every branch's has started; one after the other, the first would wait in vain
    (TimeoutError: the transaction aborts, or ends indeterminate, and the test fails)."""
    from multistore.consistency._tpc_sql import MariaDBBranch, PostgresBranch

    names = ["pg1", "pg2", "maria"]
    started: dict[str, list[str]] = {"prepare": [], "commit": []}
    everyone: dict[str, asyncio.Event] = {}

    def rendezvous(cls: type, method: str) -> None:
        original = getattr(cls, method)

        async def waiting(self: PostgresBranch | MariaDBBranch, **kwargs: bool) -> object:
            started[method].append(self.name)
            arrived = everyone.setdefault(method, asyncio.Event())
            if len(started[method]) == len(names):
                arrived.set()
            async with asyncio.timeout(5):  # bounded: well below the prepare timeout
                await arrived.wait()
            return await original(self, **kwargs)

        monkeypatch.setattr(cls, method, waiting)

    for cls in (PostgresBranch, MariaDBBranch):
        rendezvous(cls, "prepare")
        rendezvous(cls, "commit")

    async def body() -> None:
        async with await TransactionCoordinator.open(
            {n: bank[n] for n in names}, log=log_url(tmp_path), node="fan"
        ) as coordinator:
            async with coordinator.transaction(names) as tx:
                for name in names:
                    await tx.sql(name).execute(
                        "UPDATE accounts SET balance = balance + 0 WHERE id = 0"
                    )
            assert tx.state is TxState.COMMITTED

    asyncio.run(body())
    assert sorted(started["prepare"]) == sorted(started["commit"]) == sorted(names)
