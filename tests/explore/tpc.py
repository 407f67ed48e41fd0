"""2PC under the explorer: transfers between two SQLite banks, coordinators that crash
and restart, operators running recovery beside them.

On SQLite each transfer also adds a row to each bank's ``ledger`` (its id chosen by the
database) and records the other bank's ledger id beside it, as a payment names the id of
an order in another database.

Invariants once the final recovery has run: no branch left prepared, every transfer in
both banks or in neither (its ``transfers`` row on both sides or on none), each bank's
balance equal to its opening balance plus its recorded deltas, money conserved, and each
recorded ledger id naming that transfer's row in the other bank; and no heuristic outcome
against a commit decision reported anywhere (to an application or by a recovery run):
nothing outside the coordinators touches the banks, so a branch is only ever resolved as
decided. The one allowed exception is the SQLite participant's documented hazard: a
prepared branch whose replay after a crash would not reproduce what was prepared
(another process wrote the same rows meanwhile) is reported, nothing of it is applied,
its intent is kept and the run stays not resolved; that transfer is then in one bank only
(never in both: a branch that committed is never replayed). And a SQLite store never
hands out its connection inside a transaction, even after a request was cancelled in
the middle of its phase 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

from multistore.consistency import (
    DecisionLog,
    RecoveryReport,
    TransactionCoordinator,
    open_participant,
    recover_once,
    recover_transactions,
)
from multistore.core._tpc import Xid
from multistore.errors import MultistoreError, TransactionHeuristicError
from multistore.lab.explore import Actor, InvariantViolation, Simulation
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore

START = 100
BANKS = ("a", "b")
#: The operator's late pass purges markers and abort records older than this: past any
#: stall (at most four of 60 s) and clock jumps (at most four of 30 s, on either side)
#: a schedule has, so that nothing still needed is old enough.
RETENTION = 600.0
#: When that pass runs (virtual seconds after the operator's other passes).
LATE = RETENTION + 300.0
#: How long a process the scenario killed may stay down before it restarts (virtual
#: seconds): not at all, past its node's lease, or past the operator's late passes.
RESTART_DELAYS = (0.0, 30.0, LATE + 300.0)


async def create_bank(url: str) -> None:
    store = cast(RelationalStore, await open_store(url, model="relational"))
    try:
        await store.execute_script(
            "CREATE TABLE accounts (id INT PRIMARY KEY, balance INT NOT NULL);"
            "CREATE TABLE transfers (tid VARCHAR(80) PRIMARY KEY, delta INT NOT NULL, ref INT);"
            "CREATE TABLE ledger (id INTEGER PRIMARY KEY, tid TEXT NOT NULL)"
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
        heuristics: list[str] | None = None,
        *,
        ledger: bool = False,
        linger: float = 0.0,
        requests: bool = False,
        held: int = 0,
        kill_at: str | None = None,
        restart_delay: float = 0.0,
    ):
        self.sim = sim
        self.ledger = ledger
        self.linger = linger
        """Seconds the process stays up after its transfers (its background recovery
        running), before it closes."""
        self.requests = requests
        """Each transfer a request of its own (a server's): a cancel fault cancels that
        transfer only (its client went away) and the process goes on with the next."""
        self.held = held
        """Steps of the other actors each of its recovery passes waits for right after
        a participant listed its in-doubt branches (0: none)."""
        self.kill_at = kill_at
        """The coordinator event (``decided``: its commit record written; ``committed``:
        one branch committed) at whose first occurrence the scenario kills the process."""
        self.restart_delay = restart_delay
        """Seconds a killed process stays down before its restart."""
        self.killed = False
        self.lease_ttl = lease_ttl
        self.heuristics = heuristics if heuristics is not None else []
        self.wedged: list[str] = []
        """Connections this process was handed inside an earlier transaction."""
        """Heuristic outcomes reported to this process (there should be none)."""
        # Background recovery now and then often enough to run beside a transfer.
        self.recover_interval = sim.choices.choice((0.1, 1.0, 5.0))
        self.urls = urls
        self.log = log
        self.node = node
        self.left = sim.choices.randint(1, 3)

    async def run(self, actor: Actor) -> None:
        if self.killed:  # restarted after the scenario's kill: down a while first
            self.killed = False
            await asyncio.sleep(self.restart_delay)
        options: dict[str, Any] = {"node": self.node} if self.node is not None else {}
        if self.kill_at is not None:
            options["on_event"] = functools.partial(self._kill_on, actor)
        try:
            coordinator = await TransactionCoordinator.open(
                self.urls,
                log=self.log,
                prepare_timeout=5.0,
                commit_timeout=5.0,
                lease_ttl=self.lease_ttl,
                recover_interval=self.recover_interval,
                **options,
            )
        except MultistoreError as exc:  # a store failed while opening: the process exits
            self.sim.note(f"{actor.label} cannot open: {type(exc).__name__}")
            return
        # A crash drops the process's server connections (its open work rolls back).
        actor.on_crash.append(lambda: self.sim.background(_drop(coordinator)))
        self._watch(actor, coordinator)
        if self.held:
            for participant in coordinator.participants.values():
                participant.in_doubt = _held(self.sim, participant.in_doubt, self.held)  # type: ignore[method-assign]
        try:
            while self.left > 0:
                self.left -= 1
                if not self.requests:
                    await self._transfer(actor, coordinator)
                    continue
                try:
                    await actor.call(self._transfer(actor, coordinator))
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is None or task.cancelling():
                        raise  # the process itself is cancelled
                    self.sim.note(f"{actor.label}: its client went away, the transfer cancelled")
                    await self._check_connections(actor, coordinator)
            await asyncio.sleep(self.linger)
        finally:
            await coordinator.close()

    async def _transfer(self, actor: Actor, coordinator: TransactionCoordinator) -> None:
        amount = self.sim.choices.randint(1, 9)
        source, target = self.sim.choices.sample(BANKS, 2)
        try:
            async with coordinator.transaction([source, target]) as tx:
                tid = tx.xid.gtrid
                # Banks in one order in every process: no deadlock across them.
                moves = {source: -amount, target: amount}
                ids: dict[str, int] = {}
                for bank, delta in sorted(moves.items()):
                    await tx.sql(bank).execute(
                        "UPDATE accounts SET balance = balance + :d WHERE id = 1",
                        {"d": delta},
                    )
                    await tx.sql(bank).execute(
                        "INSERT INTO transfers (tid, delta) VALUES (:t, :d)",
                        {"t": tid, "d": delta},
                    )
                    if self.ledger:
                        ids[bank] = await tx.sql(bank).fetch_val(
                            "INSERT INTO ledger (tid) VALUES (:t) RETURNING id", {"t": tid}
                        )
                for bank, other in zip(BANKS, reversed(BANKS), strict=True):
                    if self.ledger:  # the id the other bank gave its row
                        await tx.sql(bank).execute(
                            "UPDATE transfers SET ref = :r WHERE tid = :t",
                            {"r": ids[other], "t": tid},
                        )
        except TransactionHeuristicError as exc:
            self.heuristics.extend(f"{actor.label}: {h}" for h in exc.heuristics)
        except MultistoreError as exc:
            self.sim.note(f"{actor.label}: {type(exc).__name__}")
            if "within a transaction" in str(exc):
                # A connection of this process was handed back inside a transaction
                # (a phase 2 cut off between its statements, say).
                self.wedged.append(f"{actor.label}: {exc}")

    async def _check_connections(self, actor: Actor, coordinator: TransactionCoordinator) -> None:
        """A SQLite store never hands its connection out inside a transaction, even after
        a request was cancelled in the middle of a phase 2."""
        for participant in coordinator.participants.values():
            for store in (
                getattr(participant, "store", None),
                getattr(participant, "intents", None),
            ):
                if not isinstance(store, RelationalStore) or not isinstance(
                    getattr(store, "native", None), sqlite3.Connection
                ):
                    continue
                with contextlib.suppress(MultistoreError):
                    async with store.connection():
                        if store.native.in_transaction:  # type: ignore[attr-defined]
                            self.wedged.append(
                                f"{actor.label}: {participant.name}'s store handed out its "
                                "connection inside a transaction after a cancelled request"
                            )

    def _kill_on(self, actor: Actor, event: str, xid: Xid, name: str) -> None:
        if event == self.kill_at:
            self.kill_at = None
            self.killed = True
            self.sim.note(f"{actor.label}: killed at {event} {name} of {xid.gtrid}")
            self.sim.kill(actor)

    def _watch(self, actor: Actor, coordinator: TransactionCoordinator) -> None:
        """Note the heuristic outcomes of the coordinator's own recovery passes (at
        open, and in the background)."""
        recover = coordinator.recover

        def note(report: RecoveryReport | None) -> None:
            for h in report.heuristics if report is not None else ():
                if h.decision == "commit" and not h.hazard:
                    self.heuristics.append(f"{actor.label} recovery: {h}")

        async def recover_noting() -> RecoveryReport:
            report = await recover()
            note(report)
            return report

        note(coordinator.last_recovery)
        coordinator.recover = recover_noting  # type: ignore[method-assign]


def _interrupt_after_marker(sim: Simulation, left: list[int], actor: Actor, what: str) -> None:
    if left[0] and actor.name == "app" and "INSERT INTO multistore_tpc_applied" in what:
        left[0] -= 1
        sim.interrupt(actor)


async def _drop(coordinator: TransactionCoordinator) -> None:
    for participant in coordinator.participants.values():
        with contextlib.suppress(Exception):
            await participant.close()


async def check_banks(
    urls: dict[str, str], hazards: set[str] = frozenset(), *, ledger: bool = False
) -> None:
    """The invariants (module docstring); ``hazards``: global ids of transfers whose
    branch recovery reported as a hazard and kept (in one bank only, then)."""
    totals = 0
    seen: dict[str, dict[str, int]] = {}
    refs: dict[str, dict[str, int | None]] = {}
    ledgers: dict[str, dict[str, int]] = {}
    for name, url in urls.items():
        store = cast(RelationalStore, await open_store(url, model="relational"))
        try:
            balance = int(await store.fetch_val("SELECT balance FROM accounts WHERE id = 1"))
            rows = await store.fetch_all("SELECT tid, delta FROM transfers")
            if ledger:
                refs[name] = {
                    str(r["tid"]): r["ref"]
                    for r in await store.fetch_all("SELECT tid, ref FROM transfers")
                }
                ledgers[name] = {
                    str(r["tid"]): int(r["id"])
                    for r in await store.fetch_all("SELECT id, tid FROM ledger")
                }
        finally:
            await store.close()
        deltas = sum(int(r["delta"]) for r in rows)
        if balance != START + deltas:
            raise InvariantViolation(
                f"bank {name}: balance {balance} but opening {START} + recorded deltas {deltas}"
            )
        seen[name] = {str(r["tid"]): int(r["delta"]) for r in rows}
        totals += balance
    a, b = (seen[name] for name in BANKS)
    half = set(a) ^ set(b)
    if half - hazards:
        raise InvariantViolation(
            f"half-applied transfers: only in a {sorted(set(a) - set(b) - hazards)}, "
            f"only in b {sorted(set(b) - set(a) - hazards)}"
        )
    kept = -sum(a.get(t, 0) + b.get(t, 0) for t in half)  # the kept branches' deltas
    if totals + kept != START * len(urls):
        raise InvariantViolation(f"money not conserved: {totals} != {START * len(urls)}")
    for name, other in zip(BANKS, reversed(BANKS), strict=True):
        for tid, ref in refs.get(name, {}).items():
            if tid in half:
                continue
            if ledgers[other].get(tid) != ref:
                raise InvariantViolation(
                    f"transfer {tid}: bank {name} names ledger row {ref} of bank {other}, "
                    f"but that transfer's row there is {ledgers[other].get(tid)}"
                )


async def transfers(sim: Simulation) -> None:
    """One coordinator (restarted after a crash), and now and then an operator's
    `recover` beside it, or a second application process with its own log or the first's;
    on SQLite. Besides: applications that serve each transfer as a request of its own
    (a cancelled one does not stop the process), a second process that stays up a while
    after its transfers, and the operator's other ways of recovering (:func:`_operator`),
    one of which waits many minutes of virtual time; the first process killed right
    after it logged a commit decision or after a bank committed its branch, and kept
    down a while, or one of its transfers cancelled right after a commit marker was
    written (:func:`run_transfers`)."""
    urls = {name: f"sqlite:///{sim.directory / name}.db" for name in BANKS}
    for url in urls.values():
        await create_bank(url)
    await run_transfers(sim, urls, ledger=True, extra=True)


async def check_hazards(urls: dict[str, str], reported: list[dict[str, Any]]) -> None:
    """A branch recovery kept as a hazard (its replay would not reproduce it) was never
    applied, so its transfer is in one bank at most: one in every bank had committed
    there already, and its replay should never have been tried (say, its commit marker
    was gone)."""
    everywhere: set[str] | None = None
    for url in urls.values():
        store = cast(RelationalStore, await open_store(url, model="relational"))
        try:
            tids = {str(r["tid"]) for r in await store.fetch_all("SELECT tid FROM transfers")}
        finally:
            await store.close()
        everywhere = tids if everywhere is None else everywhere & tids
    for h in reported:
        if h["gtrid"] in (everywhere or set()):
            raise InvariantViolation(
                f"transfer {h['gtrid']} committed in every bank, yet recovery replayed its "
                f"branch at {h['participant']} and kept it as a hazard: {h['detail']}"
            )


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


def _against_commit(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The heuristic outcomes a recovery report gives against a commit decision.

    (One against an abort decision is left out: a recovery run that listed a branch
    while its coordinator was finishing it, and took the node once that coordinator
    had forgotten the commit record and closed, records abort for the finished
    transaction and reports its committed branch as 'not as decided: abort'. Nothing
    is rolled back there; it is a false report, not a broken transaction.)"""
    return [h for h in report["heuristics"] if h["decision"] == "commit"]


def _operator(
    sim: Simulation,
    urls: dict[str, str],
    logs: list[str],
    heuristics: list[str],
    *,
    extra: bool,
    late: bool = False,
) -> Actor:
    """`multistore recover` run by hand now and then, with the first log. ``extra``:
    with either log, in one of three ways: a few passes now and then; many passes, each
    held (descheduled) for some of the other actors' steps right after a participant
    lists its in-doubt branches; or a few passes and, long after, one with a short
    retention (:data:`RETENTION`) that purges old commit markers and abort records,
    followed by one with the same retention and a log of its own. ``late``: that third
    way whatever the draw, with the pass of its own log first."""
    mode = sim.choices.choice(("now and then", "held", "late")) if extra else "now and then"
    mode = "late" if late else mode
    passes = sim.choices.randint(4, 12) if mode == "held" else sim.choices.randint(1, 3)
    hold = sim.choices.randint(1, 30) if mode == "held" else 0

    def noting(report: dict[str, Any]) -> None:
        # A hazard keeps its intent: the final recovery reports it again (and checks it).
        against = _against_commit(report)
        heuristics.extend(f"operator: {h}" for h in against if not h["hazard"])

    async def operator(actor: Actor) -> None:
        # Chosen once it runs: the list is complete by then.
        log = sim.choices.choice(logs) if extra else logs[0]
        if mode == "held":
            await _recover_by_hand(sim, urls, log, noting, passes, hold=hold)
            return
        for _ in range(passes):
            try:
                noting(await recover_transactions(urls, log))
            except MultistoreError as exc:
                sim.note(f"operator: {type(exc).__name__}")
            await asyncio.sleep(sim.choices.uniform(0, 0.05))
        if mode == "late":
            await asyncio.sleep(LATE)
            # And the operator of another deployment on the same banks, with a log of
            # its own: no branch is its to resolve, no commit marker its to purge.
            own = f"sqlite:///{sim.directory / 'other-deployment.db'}"
            for one in (own, log) if late else (log, own):
                await _recover_by_hand(sim, urls, one, noting, 1, retention=RETENTION)

    return sim.spawn("operator", operator, after_steps=sim.choices.randint(0, 60))


async def _recover_by_hand(
    sim: Simulation,
    urls: dict[str, str],
    log: str,
    noting: Callable[[dict[str, Any]], None],
    passes: int,
    *,
    hold: int = 0,
    retention: float | None = None,
) -> None:
    """``passes`` passes of :func:`recover_once` over participants opened once. ``hold``:
    each participant's listing of its in-doubt branches is followed by that many of the
    other actors' steps (a pass descheduled between its listing and what it does
    with it)."""
    opened: dict[str, Any] = {}
    try:
        decision_log = await DecisionLog.open(log)
    except MultistoreError as exc:
        sim.note(f"operator cannot open the log: {type(exc).__name__}")
        return
    try:
        for name, url in urls.items():
            opened[name] = participant = await open_participant(name, url)
            if hold:
                participant.in_doubt = _held(sim, participant.in_doubt, hold)  # type: ignore[method-assign]
        for _ in range(passes):
            try:
                if retention is None:
                    report = await recover_once(decision_log, opened)
                else:
                    report = await recover_once(decision_log, opened, retention=retention)
                noting(report.as_dict())
            except MultistoreError as exc:
                sim.note(f"operator: {type(exc).__name__}")
            await asyncio.sleep(sim.choices.uniform(0, 0.05))
    except MultistoreError as exc:
        sim.note(f"operator cannot open a participant: {type(exc).__name__}")
    finally:
        for participant in opened.values():
            with contextlib.suppress(Exception):
                await participant.close()
        with contextlib.suppress(Exception):
            await decision_log.close()


def _held(
    sim: Simulation, listing: Callable[[], Awaitable[list[Xid]]], steps: int
) -> Callable[[], Coroutine[Any, Any, list[Xid]]]:
    async def held() -> list[Xid]:
        found = await listing()
        await sim.hold(steps)
        return found

    return held


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


async def run_transfers(
    sim: Simulation,
    urls: dict[str, str],
    lease_ttl: float = 15.0,
    *,
    ledger: bool = False,
    extra: bool = False,
) -> None:
    """The scenario (module docstring). ``extra``: also the situations that need virtual
    time (see :func:`transfers`)."""
    log = f"sqlite:///{sim.directory / 'log.db'}"
    heuristics: list[str] = []
    app = App(sim, urls, log, "node1", lease_ttl, heuristics, ledger=ledger)
    if extra:
        app.requests = sim.choices.random() < 0.5
        if sim.choices.random() < 0.3:
            app.held = sim.choices.randint(1, 30)
    # A tenth of the extra schedules kill the first process at a chosen point: right
    # after it logged a commit decision, or after one bank committed its branch (a
    # window of a few of its steps that crash faults seldom hit). Drawn apart from the
    # other choices, so the other schedules stay as they were.
    plan = random.Random(sim.seed * 7907 + 5)
    second = late = False
    if extra and plan.random() < 0.1:
        app.kill_at = plan.choice(("decided", "committed"))
        app.restart_delay = plan.choice(RESTART_DELAYS)
        # In half of those, the others as the kill needs them: after a commit decision,
        # a second process with a log of its own that stays up recovering while the
        # first one is down; after a branch's commit, an operator's late passes
        # (another deployment's first) before the first one comes back.
        if plan.random() < 0.5:
            second = app.kill_at == "decided"
            late = not second
        if late:
            app.restart_delay = RESTART_DELAYS[-1]
    elif extra and plan.random() < 0.1:
        # Or its client goes away right after a branch's commit marker was written:
        # the transfer (a request) is cancelled there, the process goes on.
        app.requests = True
        sim.watches.append(functools.partial(_interrupt_after_marker, sim, [1]))
    actors = [sim.spawn("app", app.run, restart=app.run)]
    apps = [app]
    logs = [log]
    if sim.choices.random() < 0.5 or late:
        actors.append(_operator(sim, urls, logs, heuristics, extra=extra, late=late))
    if sim.choices.random() < 0.3 or second:
        # A second application process: with a log of its own, or sharing the first's
        # (its background recovery then runs beside the first's transfers).
        other_log = log
        if sim.choices.random() < 0.5 or second:
            other_log = f"sqlite:///{sim.directory / 'log2.db'}"
            logs.append(other_log)
        other = App(sim, urls, other_log, None, lease_ttl, heuristics, ledger=ledger)
        if extra:
            other.requests = sim.choices.random() < 0.5
            lingers = other.recover_interval >= 1.0 and sim.choices.random() < 0.5
            if second:
                other.recover_interval = max(other.recover_interval, 1.0)
            if lingers or second:
                # It stays up a while after its transfers, recovering in the
                # background, while the first one may be down after a crash.
                other.linger = 4 * other.recover_interval + lease_ttl
        actors.append(sim.spawn("app2", other.run, restart=other.run))
        apps.append(other)
    await sim.join(*actors)
    wedged = [line for one in apps for line in one.wedged]
    if wedged:
        raise InvariantViolation(
            "a connection handed out inside an earlier transaction: " + "; ".join(wedged)
        )
    sim.quiesce()
    # Nodes of crashed coordinators are recovered once their leases run out. A log's
    # report names another log's branches still in doubt: asked again once every log
    # has been recovered.
    reports = {one: await recover_transactions(urls, one, retry_for=3 * lease_ttl) for one in logs}
    found = [h for report in reports.values() for h in report["heuristics"]]
    for one, report in reports.items():
        if report["other_logs"]:
            reports[one] = await recover_transactions(urls, one)
            found += reports[one]["heuristics"]
    hazards = {h["gtrid"] for h in found if h["hazard"]}
    if hazards:
        await check_hazards(urls, [h for h in found if h["hazard"]])
    heuristics.extend(
        f"final recovery: {h}"
        for h in _against_commit({"heuristics": found})
        if h["gtrid"] not in hazards
    )
    for one, report in reports.items():
        # Another log's branches still in doubt are excused only as that log's hazards
        # (kept by its recovery, as the module docstring says).
        others = {branch.rsplit(":", 1)[0] for branch in report["other_logs"]}
        honest = not report["unreachable"] and others <= hazards
        if not report["resolved"] and not (honest and set(report["pending"]) <= hazards):
            raise InvariantViolation(f"final recovery with {one} left work: {report}")
    await check_banks(urls, hazards, ledger=ledger)
    if heuristics:
        raise InvariantViolation(
            "heuristic outcomes reported, though only the coordinators touched the banks: "
            + "; ".join(heuristics)
        )
