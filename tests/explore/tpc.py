"""2PC under the explorer: transfers between two SQLite banks, coordinators that crash
and restart, operators running recovery beside them.

Invariants once the final recovery has run: no branch left prepared, every transfer in
both banks or in neither (its ``transfers`` row on both sides or on none), each bank's
balance equal to its opening balance plus its recorded deltas, and money conserved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import cast

from multistore.consistency import TransactionCoordinator, recover_transactions
from multistore.errors import MultistoreError
from multistore.lab.explore import Actor, InvariantViolation, Simulation
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore

START = 100
BANKS = ("a", "b")


async def create_bank(url: str) -> None:
    store = cast(RelationalStore, await open_store(url, model="relational"))
    try:
        await store.execute_script(
            "CREATE TABLE accounts (id INT PRIMARY KEY, balance INT NOT NULL);"
            "CREATE TABLE transfers (tid VARCHAR(80) PRIMARY KEY, delta INT NOT NULL)"
        )
        await store.execute("INSERT INTO accounts VALUES (1, :b)", {"b": START})
    finally:
        await store.close()


class App:
    """A process that moves money with a coordinator of its own node and log."""

    def __init__(
        self,
        sim: Simulation,
        urls: dict[str, str],
        log: str,
        node: str | None,
        lease_ttl: float = 15.0,
    ):
        self.sim = sim
        self.lease_ttl = lease_ttl
        self.urls = urls
        self.log = log
        self.node = node
        self.left = sim.choices.randint(1, 3)

    async def run(self, actor: Actor) -> None:
        options = {"node": self.node} if self.node is not None else {}
        try:
            coordinator = await TransactionCoordinator.open(
                self.urls,
                log=self.log,
                prepare_timeout=5.0,
                commit_timeout=5.0,
                lease_ttl=self.lease_ttl,
                **options,
            )
        except MultistoreError as exc:  # a store failed while opening: the process exits
            self.sim.note(f"{actor.label} cannot open: {type(exc).__name__}")
            return
        # A crash drops the process's server connections (its open work rolls back).
        actor.on_crash.append(lambda: self.sim.background(_drop(coordinator)))
        try:
            while self.left > 0:
                self.left -= 1
                amount = self.sim.choices.randint(1, 9)
                source, target = self.sim.choices.sample(BANKS, 2)
                try:
                    async with coordinator.transaction([source, target]) as tx:
                        tid = tx.xid.gtrid
                        # Banks in one order in every process: no deadlock across them.
                        moves = {source: -amount, target: amount}
                        for bank, delta in sorted(moves.items()):
                            await tx.sql(bank).execute(
                                "UPDATE accounts SET balance = balance + :d WHERE id = 1",
                                {"d": delta},
                            )
                            await tx.sql(bank).execute(
                                "INSERT INTO transfers VALUES (:t, :d)", {"t": tid, "d": delta}
                            )
                except MultistoreError as exc:
                    self.sim.note(f"{actor.label}: {type(exc).__name__}")
        finally:
            await coordinator.close()


async def _drop(coordinator: TransactionCoordinator) -> None:
    for participant in coordinator.participants.values():
        with contextlib.suppress(Exception):
            await participant.close()


async def check_banks(urls: dict[str, str]) -> None:
    totals = 0
    seen: dict[str, set[str]] = {}
    for name, url in urls.items():
        store = cast(RelationalStore, await open_store(url, model="relational"))
        try:
            balance = int(await store.fetch_val("SELECT balance FROM accounts WHERE id = 1"))
            rows = await store.fetch_all("SELECT tid, delta FROM transfers")
        finally:
            await store.close()
        deltas = sum(int(r["delta"]) for r in rows)
        if balance != START + deltas:
            raise InvariantViolation(
                f"bank {name}: balance {balance} but opening {START} + recorded deltas {deltas}"
            )
        seen[name] = {str(r["tid"]) for r in rows}
        totals += balance
    a, b = (seen[name] for name in BANKS)
    if a != b:
        raise InvariantViolation(
            f"half-applied transfers: only in a {sorted(a - b)}, only in b {sorted(b - a)}"
        )
    if totals != START * len(urls):
        raise InvariantViolation(f"money not conserved: {totals} != {START * len(urls)}")


async def transfers(sim: Simulation) -> None:
    """One coordinator (restarted after a crash), and now and then an operator's
    `recover` beside it, or a second application process with its own log; on SQLite."""
    urls = {name: f"sqlite:///{sim.directory / name}.db" for name in BANKS}
    for url in urls.values():
        await create_bank(url)
    await run_transfers(sim, urls)


def transfers_on(urls: dict[str, str]) -> Callable[[Simulation], Awaitable[None]]:
    """The same on servers (``urls``: bank name -> a PostgreSQL or MariaDB database,
    emptied and filled again for every schedule)."""

    async def scenario(sim: Simulation) -> None:
        from multistore.consistency._tpc_sql import (
            MariaDBBranch,
            MariaDBParticipant,
            PostgresBranch,
            PostgresParticipant,
        )

        branch = ("execute", "fetch_all", "prepare", "commit", "commit_deciding", "rollback")
        participant = ("begin", "in_doubt", "commit_prepared", "rollback_prepared")
        for cls in (PostgresBranch, MariaDBBranch):
            for klass in cls.__mro__[:3]:
                sim.instrument(klass, *branch)
        for cls in (PostgresParticipant, MariaDBParticipant):
            for klass in cls.__mro__[:3]:
                sim.instrument(klass, *participant)
        for url in urls.values():
            await reset_bank(url)
        # Real time here: short node leases, so that a crashed coordinator's node is
        # free again within a second rather than fifteen.
        await run_transfers(sim, urls, lease_ttl=1.0)

    return scenario


async def reset_bank(url: str) -> None:
    store = cast(RelationalStore, await open_store(url, model="relational"))
    try:
        await store.execute_script(
            "CREATE TABLE IF NOT EXISTS accounts (id INT PRIMARY KEY, balance INT NOT NULL);"
            "CREATE TABLE IF NOT EXISTS transfers "
            "(tid VARCHAR(80) PRIMARY KEY, delta INT NOT NULL)"
        )
        await store.execute("DELETE FROM transfers")
        await store.execute("DELETE FROM accounts")
        await store.execute("INSERT INTO accounts VALUES (1, :b)", {"b": START})
    finally:
        await store.close()


async def run_transfers(sim: Simulation, urls: dict[str, str], lease_ttl: float = 15.0) -> None:
    log = f"sqlite:///{sim.directory / 'log.db'}"
    app = App(sim, urls, log, "node1", lease_ttl)
    actors = [sim.spawn("app", app.run, restart=app.run)]
    logs = [log]
    if sim.choices.random() < 0.5:

        async def operator(actor: Actor) -> None:
            try:
                await recover_transactions(urls, log)
            except MultistoreError as exc:
                sim.note(f"operator: {type(exc).__name__}")

        actors.append(sim.spawn("operator", operator, after_steps=sim.choices.randint(0, 60)))
    if sim.choices.random() < 0.3:
        other_log = f"sqlite:///{sim.directory / 'log2.db'}"
        logs.append(other_log)
        other = App(sim, urls, other_log, None, lease_ttl)
        actors.append(sim.spawn("app2", other.run, restart=other.run))
    await sim.join(*actors)
    sim.quiesce()
    # Nodes of crashed coordinators are recovered once their leases run out. A log's
    # recovery leaves another log's branches alone (and says so): every log is recovered
    # once, then a second round must find nothing left.
    for one in logs:
        await recover_transactions(urls, one, retry_for=3 * lease_ttl)
    for one in logs:
        report = await recover_transactions(urls, one, retry_for=3 * lease_ttl)
        if not report["resolved"]:
            raise InvariantViolation(f"final recovery with {one} left work: {report}")
    await check_banks(urls)
