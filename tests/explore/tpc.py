"""2PC under the explorer: transfers between two SQLite banks, coordinators that crash
and restart, operators running recovery beside them.

Invariants once the final recovery has run: no branch left prepared, every transfer in
both banks or in neither (its ``transfers`` row on both sides or on none), each bank's
balance equal to its opening balance plus its recorded deltas, and money conserved.
"""

from __future__ import annotations

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

    def __init__(self, sim: Simulation, urls: dict[str, str], log: str, node: str | None):
        self.sim = sim
        self.urls = urls
        self.log = log
        self.node = node
        self.left = sim.choices.randint(1, 3)

    async def run(self, actor: Actor) -> None:
        options = {"node": self.node} if self.node is not None else {}
        try:
            coordinator = await TransactionCoordinator.open(
                self.urls, log=self.log, prepare_timeout=5.0, commit_timeout=5.0, **options
            )
        except MultistoreError as exc:  # a store failed while opening: the process exits
            self.sim.note(f"{actor.label} cannot open: {type(exc).__name__}")
            return
        try:
            while self.left > 0:
                self.left -= 1
                amount = self.sim.choices.randint(1, 9)
                source, target = self.sim.choices.sample(BANKS, 2)
                try:
                    async with coordinator.transaction([source, target]) as tx:
                        tid = tx.xid.gtrid
                        for bank, delta in ((source, -amount), (target, amount)):
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
    `recover` beside it, or a second application process with its own log."""
    urls = {name: f"sqlite:///{sim.directory / name}.db" for name in BANKS}
    for url in urls.values():
        await create_bank(url)
    log = f"sqlite:///{sim.directory / 'log.db'}"
    app = App(sim, urls, log, "node1")
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
        other = App(sim, urls, other_log, None)
        actors.append(sim.spawn("app2", other.run, restart=other.run))
    await sim.join(*actors)
    sim.quiesce()
    for one in logs:
        report = await recover_transactions(urls, one)
        if not report["resolved"]:
            raise InvariantViolation(f"final recovery with {one} left work: {report}")
    await check_banks(urls)
