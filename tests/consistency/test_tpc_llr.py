"""Two-phase commit with a last resource: one relational branch is not prepared but
commits last, in one phase, together with the commit record in its own database."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import cast

import pytest

from multistore.consistency import (
    TransactionAbortedError,
    TransactionCoordinator,
    TransactionIndeterminateError,
    open_participant,
    recover_transactions,
)
from multistore.consistency._tpc_sql import FORGET_BATCH
from multistore.core._tpc import TxState, Vote, Xid
from multistore.lab.servers import MariaDBServer, PostgresServer
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore
from tests.consistency.bank import assert_all_or_nothing, log_url, snapshot, transfer
from tests.consistency.checks import decision_records, in_doubt, log_records, nothing_in_doubt

pytestmark = pytest.mark.server


class Crash(BaseException):
    """Stands in for the coordinator dying at a protocol point."""


async def open_coordinator(
    urls: dict[str, str], tmp_path: Path, node: str, **kwargs: object
) -> TransactionCoordinator:
    return await TransactionCoordinator.open(
        urls,
        log=log_url(tmp_path),
        node=node,
        last_resource=True,
        **kwargs,  # type: ignore[arg-type]
    )


def crash_after_decision(urls: dict[str, str], tmp_path: Path, node: str) -> None:
    """Transfer t0 in a coordinator that dies once commit is decided: the decision is
    in the last resource's table, the other branches are prepared."""

    def on_event(event: str, xid: Xid, name: str) -> None:
        if event == "decided":
            raise Crash

    async def crashed() -> None:
        async with await open_coordinator(urls, tmp_path, node, on_event=on_event) as c:
            with pytest.raises(Crash):
                await transfer(c, 0, list(urls))

    asyncio.run(crashed())


def test_the_last_resource_commit_records_the_decision_in_its_database(
    bank: dict[str, str], tmp_path: Path
) -> None:
    seen: list[tuple[list[tuple[str, str]], list[tuple[str, str]], dict[str, list[str]]]] = []

    def on_event(event: str, xid: Xid, name: str) -> None:
        if event == "decided":
            seen.append(
                (
                    log_records(str(tmp_path / "log.db")),
                    decision_records(bank["maria"]),
                    in_doubt(bank, "llr"),
                )
            )

    async def body() -> None:
        async with await open_coordinator(bank, tmp_path, "llr", on_event=on_event) as coordinator:
            for n in range(4):
                await transfer(coordinator, n, list(bank))
                snap = await snapshot(bank)
                assert snap["total"] == snap["expected"]
            async with coordinator.transaction(list(bank)) as tx:
                await tx.sql("pg1").execute("UPDATE accounts SET balance = balance - 1")
                await tx.sql("maria").execute("UPDATE accounts SET balance = balance + 1")
            assert tx.holder == "maria"  # MariaDB is preferred: its steps are thread hops
            assert tx.votes["maria"] is Vote.YES and tx.state is TxState.COMMITTED

    asyncio.run(body())
    assert assert_all_or_nothing(asyncio.run(snapshot(bank))) == {"t0", "t1", "t2", "t3"}
    assert len(seen) == 5
    for log, decisions, prepared in seen:
        assert log == []  # no write to the coordinator's log
        assert decisions[-1][1] == "commit"  # the last resource's commit carried it
        gtrid = decisions[-1][0]
        assert prepared["maria"] == []  # the last resource was never prepared
        branches = [gid for gids in prepared.values() for gid in gids]
        assert branches and all(gid.startswith(f"{gtrid}:") for gid in branches)
        assert all(Xid.parse(gid).holder == "maria" for gid in branches)
    assert decision_records(bank["maria"]) == []  # forgotten once finished (at close)
    assert nothing_in_doubt(bank, "llr")


def test_finished_records_are_deleted_in_the_background_in_batches(
    bank: dict[str, str], tmp_path: Path
) -> None:
    urls = {k: bank[k] for k in ("pg1", "pg2")}

    async def body() -> None:
        async with await open_coordinator(urls, tmp_path, "batch") as coordinator:
            for n in range(FORGET_BATCH + 4):
                await transfer(coordinator, n, list(urls))
            # the first FORGET_BATCH went in the background, the last four wait
            deadline = time.monotonic() + 30
            while len(decision_records(urls["pg1"])) != 4:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"records left: {decision_records(urls['pg1'])}")
                await asyncio.sleep(0.05)
        assert decision_records(urls["pg1"]) == []  # the rest at close

    asyncio.run(body())
    assert nothing_in_doubt(urls, "batch")


def test_idle_branches_around_the_last_resource(bank: dict[str, str], tmp_path: Path) -> None:
    """A last resource that ran nothing still records the decision when two other
    branches are prepared; with one prepared branch that branch's commit decides; with
    nothing prepared elsewhere the last resource commits alone."""
    names = ["pg1", "pg2", "maria"]
    records: list[list[tuple[str, str]]] = []

    def on_event(event: str, xid: Xid, name: str) -> None:
        if event == "decided":
            records.append(decision_records(bank["maria"]))

    async def body() -> None:
        async with await open_coordinator(bank, tmp_path, "idle", on_event=on_event) as c:
            async with c.transaction(names) as tx:  # two prepared, the last resource idle
                await tx.sql("pg1").execute("UPDATE accounts SET balance = 1 WHERE id = 0")
                await tx.sql("pg2").execute("UPDATE accounts SET balance = 2 WHERE id = 0")
            assert tx.votes == {"pg1": Vote.YES, "pg2": Vote.YES, "maria": Vote.YES}
            assert [d for _, d in records.pop()] == ["commit"]
            async with c.transaction(names) as tx:  # one prepared: its commit decides
                await tx.sql("pg1").execute("UPDATE accounts SET balance = 3 WHERE id = 0")
            assert tx.votes == {"pg1": Vote.YES, "pg2": Vote.READ_ONLY, "maria": Vote.READ_ONLY}
            assert [d for _, d in records.pop()] == ["commit"]  # only the first one's
            async with c.transaction(names) as tx:  # only the last resource wrote
                await tx.sql("maria").execute("UPDATE accounts SET balance = 4 WHERE id = 0")
            assert tx.votes == {"pg1": Vote.READ_ONLY, "pg2": Vote.READ_ONLY, "maria": Vote.YES}
            async with c.transaction(names) as tx:
                pass  # nothing written anywhere: every branch read-only
            assert set(tx.votes.values()) == {Vote.READ_ONLY}
            assert tx.state is TxState.COMMITTED
            assert records == []  # no decision in the last two

    asyncio.run(body())
    balances = [asyncio.run(_balance(bank[name])) for name in names]
    assert balances == [3, 2, 4]
    assert nothing_in_doubt(bank, "idle")


def test_a_last_resource_that_fails_to_commit_aborts_everything(
    bank: dict[str, str], tmp_path: Path
) -> None:
    urls = {k: bank[k] for k in ("pg1", "pg2", "lite", "redis")}

    async def body() -> None:
        pg1 = await _store(urls["pg1"])
        await pg1.execute(
            "CREATE TABLE seen (k INT, CONSTRAINT seen_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)"
        )
        await pg1.execute("INSERT INTO seen (k) VALUES (1)")
        await pg1.close()
        async with await open_coordinator(urls, tmp_path, "fail") as coordinator:
            with pytest.raises(TransactionAbortedError) as caught:
                async with coordinator.transaction(list(urls)) as tx:
                    for name in ("pg2", "lite"):
                        await tx.sql(name).execute("UPDATE accounts SET balance = 0")
                    tx["redis"].set("transfer:x", "1")
                    # accepted now, refused by the one-phase COMMIT (deferred constraint)
                    await tx.sql("pg1").execute("INSERT INTO seen (k) VALUES (1)")
            assert tx.holder == "pg1"
            assert caught.value.definite and "pg1" in caught.value.reasons
            assert tx.votes["pg1"] is Vote.NO and tx.state is TxState.ABORTED

    asyncio.run(body())
    snap = asyncio.run(snapshot(urls))
    assert snap["total"] == snap["expected"] and not any(snap["tids"].values())
    assert nothing_in_doubt(urls, "fail")
    assert decision_records(urls["pg1"]) == []


def test_branches_wait_in_doubt_while_their_last_resource_is_down(
    bank: dict[str, str], tmp_path: Path, mariadb_server: MariaDBServer
) -> None:
    """No presumed abort without asking the participant that holds the decision."""
    urls = {k: bank[k] for k in ("maria", "pg1", "lite")}
    crash_after_decision(urls, tmp_path, "hdown")  # the decision is in MariaDB
    branches = in_doubt(urls, "hdown")
    assert len(branches["pg1"]) == 1 and len(branches["lite"]) == 1
    mariadb_server.stop()
    try:
        down = asyncio.run(recover_transactions(urls, log_url(tmp_path), node="hdown"))
        assert not down["resolved"] and "maria" in down["unreachable"]
        assert down["committed"] == [] and down["rolled_back"] == []
        left = in_doubt({k: urls[k] for k in ("pg1", "lite")}, "hdown")
        assert left == {k: branches[k] for k in ("pg1", "lite")}  # untouched
    finally:
        mariadb_server.start()
    report = asyncio.run(recover_transactions(urls, log_url(tmp_path), retry_for=10))
    assert report["resolved"] and report["heuristics"] == []
    assert sorted(Xid.parse(b).branch for b in report["committed"]) == ["lite", "pg1"]
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {"t0"}
    assert nothing_in_doubt(urls, "hdown")
    assert decision_records(urls["maria"]) == []  # forgotten by recovery


def test_a_last_resource_lost_before_its_commit_is_indeterminate_then_rolled_back(
    bank: dict[str, str], tmp_path: Path, postgres_server: PostgresServer
) -> None:
    urls = {k: bank[k] for k in ("pg1", "lite", "redis")}

    def on_event(event: str, xid: Xid, name: str) -> None:
        if event == "prepared" and all(
            in_doubt({k: urls[k] for k in ("lite", "redis")}, "lost").values()
        ):
            postgres_server.stop()  # the last resource's open transaction dies with it

    async def body() -> None:
        # The stop above blocks the event loop while the other prepare's answer waits
        # to be read: a prepare timeout that a loaded machine cannot overrun.
        async with await open_coordinator(
            urls, tmp_path, "lost", on_event=on_event, commit_timeout=5, prepare_timeout=120
        ) as coordinator:
            with pytest.raises(TransactionIndeterminateError) as caught:
                await transfer(coordinator, 0, list(urls))
            assert not caught.value.definite
            assert caught.value.pending == ("lite", "pg1", "redis")

    try:
        asyncio.run(body())
    finally:
        postgres_server.start()
    report = asyncio.run(recover_transactions(urls, log_url(tmp_path), retry_for=10))
    assert report["resolved"] and report["committed"] == []
    assert sorted(Xid.parse(b).branch for b in report["rolled_back"]) == ["lite", "redis"]
    assert [d for _, d in decision_records(urls["pg1"])] == ["abort"]
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == set()
    assert nothing_in_doubt(urls, "lost")


def test_branch_rolled_back_by_hand_after_the_decision_is_a_heuristic_outcome(
    bank: dict[str, str], tmp_path: Path, postgres_server: PostgresServer
) -> None:
    urls = {k: bank[k] for k in ("pg1", "pg2", "lite")}
    crash_after_decision(urls, tmp_path, "heur")
    [gid] = in_doubt(urls, "heur")["pg2"]
    assert Xid.parse(gid).holder == "pg1"
    postgres_server.execute(f"ROLLBACK PREPARED '{gid}'", database=urls["pg2"].rsplit("/", 1)[1])
    report = asyncio.run(recover_transactions(urls, log_url(tmp_path), node="heur"))
    assert [(h["participant"], h["decision"]) for h in report["heuristics"]] == [("pg2", "commit")]
    assert [Xid.parse(b).branch for b in report["committed"]] == ["lite"]
    assert decision_records(urls["pg1"]) == []  # reported, then forgotten
    snap = asyncio.run(snapshot(urls))
    assert snap["tids"]["pg2"] == set() and snap["tids"]["pg1"] == {"t0"}


def test_names_too_long_for_a_mariadb_branch_id_use_the_decision_log(
    postgres_url: str, mariadb_url: str, tmp_path: Path
) -> None:
    """MariaDB's bqual holds 64 bytes: ``<branch>@<holder>`` must fit, else the
    coordinator's log records the decision."""
    urls = {"m" * 40: mariadb_url, "p" * 40: postgres_url}
    asyncio.run(_create_accounts(urls))
    logged: list[list[tuple[str, str]]] = []

    def on_event(event: str, xid: Xid, name: str) -> None:
        if event == "decided":
            logged.append(log_records(str(tmp_path / "log.db")))

    async def body() -> None:
        async with await open_coordinator(urls, tmp_path, "long", on_event=on_event) as c:
            async with c.transaction(list(urls)) as tx:
                for name in urls:
                    await tx.sql(name).execute("UPDATE accounts SET balance = 5")
            assert tx.holder is None

    asyncio.run(body())
    assert [[d for _, d in records] for records in logged] == [["commit"]]
    assert [asyncio.run(_balance(url)) for url in urls.values()] == [5, 5]


async def _store(url: str) -> RelationalStore:
    store = await open_store(url, model="relational")
    assert isinstance(store, RelationalStore)
    return store


async def _create_accounts(urls: dict[str, str]) -> None:
    for url in urls.values():
        store = await _store(url)
        try:
            await store.execute("CREATE TABLE accounts (id INT PRIMARY KEY, balance INT)")
            await store.execute("INSERT INTO accounts (id, balance) VALUES (0, 0)")
        finally:
            await store.close()


async def _balance(url: str) -> int:
    store = await _store(url)
    try:
        return int(await store.fetch_val("SELECT balance FROM accounts WHERE id = 0"))
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_a_batch_of_forgotten_records_is_one_delete(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """A last resource forgets finished records FORGET_BATCH at a time in one statement,
    so one forced log write for the batch (PostgreSQL: one transaction id; MariaDB: one
    DELETE, where one autocommit DELETE per record forced the log once per record), also
    when some were forgotten already (by recovery, say)."""
    url = str(request.getfixturevalue("postgres_url" if kind == "postgresql" else "mariadb_url"))
    counter = (
        "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS n"
        if kind == "postgresql"
        else "SELECT VARIABLE_VALUE AS n FROM information_schema.GLOBAL_STATUS "
        "WHERE VARIABLE_NAME = 'COM_DELETE'"
    )

    async def body() -> None:
        participant = await open_participant("holder", url)
        store = cast(RelationalStore, await open_store(url, model="relational"))
        try:
            records = participant.decisions
            assert records is not None
            xids = [Xid("n1", uuid.uuid4().hex) for _ in range(FORGET_BATCH)]
            await asyncio.gather(*(records.log_commit(x, ["a"]) for x in xids))
            await records.forget(xids[3])  # gone before the batch names it
            before = int(await store.fetch_val(counter))
            for x in xids:
                records.forget_later(x)
            await records.flush()
            assert int(await store.fetch_val(counter)) - before == 1
            assert decision_records(url) == []
        finally:
            await store.close()
            await participant.close()

    asyncio.run(body())
