"""The two-phase commit coordinator (presumed abort) and its transaction object.

::

    coordinator = await TransactionCoordinator.open(
        {"orders": "postgresql://…/orders", "payments": "mariadb://…/payments",
         "inventory": "sqlite:///inventory.db"})
    async with coordinator.transaction(["orders", "payments", "inventory"]) as tx:
        await tx["orders"].execute("INSERT INTO orders (id, total) VALUES (:id, :t)", …)

When the block ends normally the coordinator runs the protocol: prepare on every
branch concurrently, bounded by ``prepare_timeout``; decide (commit only if all voted
yes or read-only); log a commit decision, forced to disk, only when two or more
branches are prepared; then commit (or roll back) the prepared branches concurrently.
A single participant commits in one phase. When the block raises, every branch is
rolled back and the exception propagates.

With ``last_resource=True`` a transaction that spans a PostgreSQL or MariaDB
participant uses one of them (MariaDB first, else the first in the transaction's
order) as its *last resource*: that branch is not prepared; once the others are, it
commits in one phase together with the commit record, written into its own database.
That commit is the decision — no write to the coordinator's log, one prepare less. The
other branches' ids name it (``…:<branch>@<holder>``) so recovery reads their decision
there, and recovery's abort record for a branch with no decision goes into the same
table, where it makes a late last-resource commit fail on the duplicate key.

Outcomes: normal exit means committed everywhere. :class:`TransactionAbortedError`
(definite) means rolled back everywhere. :class:`TransactionIndeterminateError` means
commit may have been decided and some branch is not confirmed; the recovery manager
finishes it — the coordinator never reports failure for a transaction that recovery
will commit. Once the block has ended, the protocol runs in a task of its own: a
caller cancelled meanwhile gets :class:`asyncio.CancelledError`, and the transaction
still completes (or is left to recovery) exactly as it would have.

The log (by default the config's ``transactions`` role) holds the coordinator's
*node* id as a lease (``_tpc_nodes``): ``node`` names it (a second live coordinator
with the same id is refused), or, left out, a fresh id is made. A live coordinator
renews its lease and, every ``recover_interval`` seconds, recovers in the background
its own transactions left in doubt (a phase 2 that failed) and those of nodes whose
lease ran out (a coordinator that crashed or closed), so nothing waits for an operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn, Self, TypeVar

from multistore.consistency._tpc_errors import (
    HeuristicOutcome,
    TransactionAbortedError,
    TransactionHeuristicError,
    TransactionIndeterminateError,
)
from multistore.consistency._tpc_log import DecisionLog
from multistore.consistency._tpc_nodes import NodeBusyError, new_owner
from multistore.consistency._tpc_participants import (
    Branch,
    Participant,
    SQLBranch,
    open_participant,
)
from multistore.consistency._tpc_recovery import RecoveryReport, recover_once
from multistore.core._tpc import (
    TID_DIGITS,
    Decision,
    TxState,
    Vote,
    Xid,
    advance,
    decide,
    last_resource,
    needs_decision_log,
    phase_two_targets,
)
from multistore.errors import DuplicateKeyError, MultistoreError, UsageError
from multistore.urls import StoreURL

__all__ = ["DistributedTransaction", "EventHook", "TransactionCoordinator"]

T = TypeVar("T")

#: How long a coordinator's node lease lasts unless renewed (it renews every third).
LEASE_TTL = 15.0
#: How often a live coordinator recovers in the background (seconds).
RECOVER_INTERVAL = 5.0
#: While stopping, a keeper still running is cancelled again this often (seconds).
_RECANCEL_EVERY = 0.5

#: Called at protocol points with (event, xid, participant name or ""):
#: ``preparing`` (phase 1 starts), ``prepared`` (one branch), ``decided`` (commit decided
#: and, if needed, logged), ``committed`` (one branch). For fault injection in tests and the lab.
EventHook = Callable[[str, Xid, str], None]


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _fresh_node() -> str:
    return f"c-{secrets.token_hex(5)}"


def _settled(task: asyncio.Future[Any]) -> None:
    """Retrieve a finished task's exception (its caller may have been cancelled and
    never look), so asyncio does not report it as lost."""
    if not task.cancelled():
        task.exception()


class DistributedTransaction:
    """One distributed transaction: ``tx[name]`` is that participant's branch."""

    def __init__(self, xid: Xid, branches: Mapping[str, Branch], holder: str | None = None) -> None:
        self.xid = xid
        self.branches = dict(branches)
        self.holder = holder
        """The last resource (whose own commit records the decision), if any."""
        self._state = TxState.ACTIVE
        self.votes: dict[str, Vote | None] = {}
        self.reasons: dict[str, str] = {}
        self.heuristics: list[HeuristicOutcome] = []
        self._stragglers: dict[str, asyncio.Future[Vote]] = {}
        """Prepares that did not answer in time (cancelled, maybe still finishing)."""

    def __getitem__(self, name: str) -> Any:
        """The branch on participant ``name`` (an :class:`SQLBranch` for relational
        stores: ``execute``, ``fetch_all``, ``fetch_one``, ``fetch_val``)."""
        try:
            return self.branches[name]
        except KeyError:
            raise UsageError(
                f"{name!r} is not a participant of this transaction "
                f"(it spans {sorted(self.branches)})"
            ) from None

    @property
    def state(self) -> TxState:
        return self._state

    @state.setter
    def state(self, to: TxState) -> None:
        self._state = advance(self._state, to)  # checked against TRANSITIONS

    def sql(self, name: str) -> SQLBranch:
        """The branch on a relational participant, typed as such."""
        branch = self[name]
        if not isinstance(branch, SQLBranch):
            raise UsageError(f"participant {name!r} is not a relational store")
        return branch

    def __repr__(self) -> str:
        return f"<DistributedTransaction {self.xid} {self.state.value}>"


class TransactionCoordinator:
    """Runs distributed transactions over named participants, with a decision log.

    Build it with :meth:`open` (which takes the node's lease and starts background
    recovery); the constructor alone does neither."""

    def __init__(
        self,
        participants: Mapping[str, Participant],
        log: DecisionLog,
        *,
        node: str,
        prepare_timeout: float = 10.0,
        commit_timeout: float = 10.0,
        on_event: EventHook | None = None,
        last_resource: bool = False,
        lease_ttl: float = LEASE_TTL,
        recover_interval: float | None = RECOVER_INTERVAL,
    ) -> None:
        Xid(node, "0" * TID_DIGITS, log=log.log_id or "0" * 10)  # validates the node id
        self.participants = dict(participants)
        self.log = log
        self.node = node
        self.owner = new_owner()
        """This coordinator's lease token in the log (see ``_tpc_nodes``)."""
        self.prepare_timeout = prepare_timeout
        self.commit_timeout = commit_timeout
        self.last_resource = last_resource
        self.on_event = on_event
        self.lease_ttl = lease_ttl
        self.recover_interval = recover_interval
        self.last_recovery: RecoveryReport | None = None
        """The report of the latest recovery pass (at open, on demand or background)."""
        self._holders: dict[tuple[str, ...], str | None] = {}
        """The last resource by the transaction's participant names (it does not depend
        on the transaction id)."""
        self._background: set[asyncio.Task[Any]] = set()
        self._in_flight: dict[str, int] = {}
        """Global ids of this coordinator's transactions under way (and how many tasks
        still work on each): recovery leaves them alone."""
        self._keepers: list[asyncio.Task[None]] = []
        self._stopping = False
        """Set when the keepers must stop: each checks it at every turn, so one that
        swallowed its cancellation still ends (see ``_stop_keepers``)."""
        self._lost: str | None = None
        """Why this coordinator may not start transactions any more (its lease lost)."""
        self._recovering = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        participants: Mapping[str, str | StoreURL | Participant],
        *,
        log: str | StoreURL | None = None,
        node: str | None = None,
        prepare_timeout: float = 10.0,
        commit_timeout: float = 10.0,
        recover: bool = True,
        on_event: EventHook | None = None,
        last_resource: bool = False,
        lease_ttl: float = LEASE_TTL,
        recover_interval: float | None = RECOVER_INTERVAL,
        node_wait: float | None = None,
    ) -> Self:
        """Open the participants (URLs or ready objects) and the log (None: the
        config's ``transactions`` role, as recovery and ``multistore recover`` find it).

        ``node``: this coordinator's id in the log; taken as a lease, waiting up to
        ``node_wait`` seconds (default ``lease_ttl``: long enough for a crashed
        predecessor's lease to run out) while another coordinator holds it, then
        :class:`NodeBusyError`. None: a fresh id (``c-`` and 10 hex digits); what an
        earlier process left is then recovered when its lease runs out, by whichever
        coordinator of the log comes first. With ``recover``, resolve what this node and
        nodes nobody holds left in doubt (participants that are down are skipped; the
        background recovery tries again every ``recover_interval`` seconds, None: never).
        ``last_resource``: let a PostgreSQL or MariaDB branch record the decision by its
        own commit (module docstring)."""
        opened: dict[str, Participant] = {}
        decision_log: DecisionLog | None = None
        self: Self | None = None
        try:
            for name, target in participants.items():
                opened[name] = (
                    target
                    if isinstance(target, Participant)
                    else await open_participant(name, target)
                )
            decision_log = await DecisionLog.open(log)
            for participant in opened.values():
                await participant.note_log(decision_log.log_id, decision_log.location)
            self = cls(
                opened,
                decision_log,
                node=node or _fresh_node(),
                prepare_timeout=prepare_timeout,
                commit_timeout=commit_timeout,
                on_event=on_event,
                last_resource=last_resource,
                lease_ttl=lease_ttl,
                recover_interval=recover_interval,
            )
            await self._take_node(
                explicit=node is not None, wait=lease_ttl if node_wait is None else node_wait
            )
            if recover:
                await self.recover()
            self._start_keepers()
        except BaseException:
            if self is not None:
                await self._stop_keepers()
                with contextlib.suppress(Exception):
                    await decision_log.nodes.release(self.node, self.owner)  # type: ignore[union-attr]
            for participant in opened.values():
                with contextlib.suppress(Exception):
                    await participant.close()
            if decision_log is not None:
                await decision_log.close()
            raise
        return self

    async def _take_node(self, *, explicit: bool, wait: float) -> None:
        """Take the node's lease: a fresh id (drawn again if the log knows it), or the
        one asked for (waiting for a lease held by another coordinator to run out, for
        up to ``wait`` seconds)."""
        nodes = self.log.nodes
        if not explicit:
            while self.node in await nodes.leases() or not await nodes.acquire(
                self.node, self.owner, self.lease_ttl
            ):
                self.node = _fresh_node()
            return
        node = self.node
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not await nodes.acquire(node, self.owner, self.lease_ttl):
            lease = (await nodes.leases()).get(node)
            left = deadline - loop.time()
            if lease is None or left <= 0:
                held = lease.describe() if lease is not None else f"node {node!r} is taken"
                raise NodeBusyError(
                    f"{held}: give each coordinator its own node id (or none, and one is "
                    "made up), or close the other one first"
                )
            await asyncio.sleep(min(max(lease.remaining, 0.05), left, 1.0))

    async def close(self) -> None:
        """Stop background recovery, let transactions still completing finish (bounded),
        give the node's lease back and close participants and log. Whatever is left in
        doubt is recovered by the next coordinator of the log, or ``multistore recover``."""
        await self._stop_keepers()
        if self._background:
            await asyncio.wait(self._background, timeout=2 * self.commit_timeout)
        for participant in self.participants.values():
            # Bounded: a straggler still running past the wait above may hold a
            # participant's connection (a SQLite store has one).
            if participant.decisions is not None:
                with contextlib.suppress(Exception):  # recovery forgets them otherwise
                    async with asyncio.timeout(self.commit_timeout):
                        await participant.decisions.flush()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.commit_timeout):
                    await participant.close()
        if self._lost is None:
            with contextlib.suppress(MultistoreError):
                await self.log.nodes.release(self.node, self.owner)
        await self.log.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def recover(self) -> RecoveryReport:
        """One recovery pass: this node's transactions left in doubt (not those still
        under way) and those of nodes whose lease ran out."""
        async with self._recovering:
            report = await recover_once(
                self.log,
                self.participants,
                owner=self.owner,
                # The live view, not a copy: a transaction that starts while the pass
                # runs is still left alone when the pass reaches its branches.
                in_flight=self._in_flight.keys(),
                lease_ttl=self.lease_ttl,
            )
        self.last_recovery = report
        return report

    # -- the node's lease and background recovery --

    def _start_keepers(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = False
        self._keepers.append(loop.create_task(self._renew_lease()))
        if self.recover_interval is not None:
            self._keepers.append(loop.create_task(self._recover_periodically()))
        for task in self._keepers:
            task.add_done_callback(_settled)

    async def _stop_keepers(self) -> None:
        """Stop the keepers, waiting at most ``commit_timeout``. A cancellation can be
        lost: on Python 3.11 ``asyncio.wait_for`` (which drivers use inside every call,
        redis-py for each command it sends) returns its result instead of raising when
        the cancel comes just as the awaited call finishes. So the keepers also check
        ``_stopping`` at every turn, and a keeper still running is cancelled again
        until it ends; past the bound it is left to end at its next check."""
        self._stopping = True
        pending = set(self._keepers)
        self._keepers = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.commit_timeout
        while pending:
            left = deadline - loop.time()
            if left <= 0:
                return
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=min(left, _RECANCEL_EVERY))

    async def _renew_lease(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.lease_ttl / 3)
            if self._stopping:
                return
            try:
                held = await self.log.nodes.renew(self.owner, self.lease_ttl)
            except MultistoreError:
                continue  # the log is down: try again (the lease may run out meanwhile)
            if self.node not in held:
                self._lost = (
                    f"coordinator node {self.node!r} lost its lease in {self.log.describe()} "
                    f"(not renewed for {self.lease_ttl:g} s, another process took it over); "
                    "open a new coordinator"
                )
                return

    async def _recover_periodically(self) -> None:
        assert self.recover_interval is not None
        while self._lost is None and not self._stopping:
            await asyncio.sleep(self.recover_interval)
            if self._stopping:
                return
            with contextlib.suppress(Exception):  # down participants: next time
                await self.recover()

    def _shielded(self, work: Awaitable[T]) -> Awaitable[T]:
        """Run ``work`` in a task of its own that a cancelled caller does not stop (the
        caller gets CancelledError; ``close`` waits for the task)."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(_settled)
        task.add_done_callback(self._background.discard)
        return asyncio.shield(task)

    def _enter(self, gtrid: str) -> None:
        self._in_flight[gtrid] = self._in_flight.get(gtrid, 0) + 1

    def _leave(self, gtrid: str) -> None:
        left = self._in_flight.get(gtrid, 1) - 1
        if left:
            self._in_flight[gtrid] = left
        else:
            self._in_flight.pop(gtrid, None)

    def _emit(self, event: str, xid: Xid, name: str = "") -> None:
        if self.on_event is not None:
            self.on_event(event, xid, name)

    @contextlib.asynccontextmanager
    async def transaction(self, names: Sequence[str]) -> AsyncIterator[DistributedTransaction]:
        """A transaction across the named participants (see the module docstring)."""
        if not names or len(set(names)) != len(names):
            raise UsageError(f"a transaction needs distinct participant names, not {names!r}")
        unknown = [name for name in names if name not in self.participants]
        if unknown:
            raise UsageError(
                f"unknown participants {unknown}; configured: {sorted(self.participants)}"
            )
        if self._lost is not None:
            raise NodeBusyError(self._lost)
        xid = Xid(self.node, uuid.uuid4().hex[:TID_DIGITS], log=self.log.log_id)
        holder = self._holder(xid, names) if self.last_resource else None
        self._enter(xid.gtrid)  # recovery leaves it alone from here on
        try:
            branches = await self._begin_all(xid, names, holder or "")
        except BaseException:
            self._leave(xid.gtrid)
            raise
        tx = DistributedTransaction(xid, branches, holder)
        try:
            yield tx
        except BaseException as exc:
            await self._shielded(self._finish(tx, self._abandon(tx)))
            if isinstance(exc, MultistoreError) and not exc.definite:
                # A statement timed out or lost its connection: unknown for that
                # statement, but no branch was prepared, so the transaction is not.
                raise TransactionAbortedError(
                    f"transaction {xid.gtrid} rolled back: a statement failed: {exc}",
                    gtrid=xid.gtrid,
                ) from exc
            raise
        await self._shielded(self._finish(tx, self._complete(tx)))

    async def _abandon(self, tx: DistributedTransaction) -> None:
        tx.state = TxState.ABORTING
        await self._rollback(tx, list(tx.branches))
        tx.state = TxState.ABORTED

    async def _finish(self, tx: DistributedTransaction, work: Awaitable[None]) -> None:
        """Run the end of the protocol, then hand every connection back."""
        try:
            await work
        finally:
            # Every branch is finished here (committed, prepared or rolled back), so a
            # release only hands the connection back: one after the other, no tasks.
            for name, branch in tx.branches.items():
                if name not in tx._stragglers:
                    await self._release(branch)
            self._leave(tx.xid.gtrid)

    async def _release(self, branch: Branch) -> None:
        with contextlib.suppress(Exception):  # a stuck connection is dropped, not waited on
            async with asyncio.timeout(self.commit_timeout):
                await branch.release()

    def _holder(self, xid: Xid, names: Sequence[str]) -> str | None:
        """The transaction's last resource: a participant that keeps decisions and whose
        name fits every branch id (MariaDB's bqual is short), MariaDB first (see
        ``last_resource_rank``), else the first in the transaction's order."""
        key = tuple(names)
        if key not in self._holders:

            def rank(name: str) -> int | None:
                participant = self.participants[name]
                fits = all(self.participants[n].accepts(xid.for_branch(n, name)) for n in names)
                if participant.decisions is None or not fits:
                    return None
                return participant.last_resource_rank

            self._holders[key] = last_resource(names, rank)
        return self._holders[key]

    async def _begin_all(self, xid: Xid, names: Sequence[str], holder: str) -> dict[str, Branch]:
        # One after the other: a begin only leases a connection (the transaction starts
        # with the branch's first statement), so tasks would cost more than they save.
        branches: dict[str, Branch] = {}
        try:
            for name in names:
                branches[name] = await self.participants[name].begin(xid.for_branch(name, holder))
        except BaseException:
            for branch in branches.values():
                with contextlib.suppress(Exception):
                    await branch.release()
            raise
        return branches

    async def _complete(self, tx: DistributedTransaction) -> None:
        tx.state = TxState.PREPARING
        if len(tx.branches) == 1:
            await self._one_phase(tx, next(iter(tx.branches.values())))
            return
        holder = tx.holder
        await self._prepare_all(tx, [name for name in tx.branches if name != holder])
        decision = decide(tx.votes)
        if decision is Decision.ABORT:
            undecided = [holder] if holder is not None else []
            await self._abort(tx, phase_two_targets(tx.votes, Decision.ABORT) + undecided)
        targets = phase_two_targets(tx.votes, Decision.COMMIT)
        if holder is not None:
            logged = await self._decide_by_last_resource(tx, holder, targets)
            if tx.state is TxState.COMMITTED:
                return
            tx.state = TxState.COMMITTING
            self._emit("decided", tx.xid)
            await self._commit_all(tx, targets, logged=logged)
            return
        if needs_decision_log(tx.votes):
            try:
                await self.log.log_commit(tx.xid, targets)
            except DuplicateKeyError:
                tx.reasons["coordinator"] = "a recovery manager decided abort first"
                await self._abort(tx, targets)
            except Exception as exc:
                if isinstance(exc, MultistoreError) and exc.definite:
                    tx.reasons["coordinator"] = f"the decision log refused the commit: {exc}"
                    await self._abort(tx, targets)
                tx.state = TxState.IN_DOUBT
                raise TransactionIndeterminateError(
                    f"transaction {tx.xid.gtrid}: writing the commit decision failed ({exc}); "
                    "it may or may not have been logged, recovery will finish it",
                    gtrid=tx.xid.gtrid,
                    pending=targets,
                ) from exc
        tx.state = TxState.COMMITTING
        self._emit("decided", tx.xid)
        await self._commit_all(tx, targets, logged=needs_decision_log(tx.votes))

    async def _decide_by_last_resource(
        self, tx: DistributedTransaction, holder: str, targets: Sequence[str]
    ) -> bool:
        """Commit the last resource, with the commit record when ``targets`` (the
        prepared branches) need one; True when a record was written."""
        last = tx.branches[holder]
        if not targets:  # no other branch to commit: the last resource alone, one phase
            if last.idle:
                await last.rollback()  # nothing was started: only marks it finished
                tx.votes[holder] = Vote.READ_ONLY
                tx.state = TxState.COMMITTED
            else:
                await self._one_phase(tx, last)
            return False
        if last.idle and len(targets) == 1:
            # One prepared branch and nothing here: its own commit is the decision
            # (presumed abort rolls it back if it is still prepared after a crash).
            await last.rollback()
            tx.votes[holder] = Vote.READ_ONLY
            return False
        try:
            async with asyncio.timeout(self.commit_timeout):
                await last.commit_deciding(targets)
        except Exception as exc:  # anything but a definite error: it may have committed
            if isinstance(exc, MultistoreError) and exc.definite:
                tx.votes[holder] = Vote.NO
                tx.reasons[holder] = f"the last resource did not commit: {exc}"
                await self._abort(tx, targets)
            tx.state = TxState.IN_DOUBT
            raise TransactionIndeterminateError(
                f"transaction {tx.xid.gtrid}: the commit of {holder}, the last resource "
                f"that records the decision, did not confirm ({exc or 'timeout'}); "
                "recovery commits the prepared branches if it committed, else rolls "
                "them back",
                gtrid=tx.xid.gtrid,
                pending=sorted([holder, *targets]),
            ) from exc
        tx.votes[holder] = Vote.YES
        return True

    async def _one_phase(self, tx: DistributedTransaction, branch: Branch) -> None:
        try:
            async with asyncio.timeout(self.commit_timeout):
                await branch.commit(one_phase=True)
        except Exception as exc:  # anything but a definite error: it may have committed
            definite = isinstance(exc, MultistoreError) and exc.definite
            tx.state = TxState.ABORTED if definite else TxState.IN_DOUBT
            if definite:
                raise TransactionAbortedError(
                    f"transaction {tx.xid.gtrid} rolled back: {branch.name}: {exc}",
                    gtrid=tx.xid.gtrid,
                    reasons={branch.name: str(exc)},
                ) from exc
            raise TransactionIndeterminateError(
                f"transaction {tx.xid.gtrid}: the one-phase commit on {branch.name} did "
                f"not confirm ({exc or 'timeout'}); it may have committed",
                gtrid=tx.xid.gtrid,
                pending=[branch.name],
            ) from exc
        tx.votes[branch.name] = Vote.YES
        tx.state = TxState.COMMITTED

    async def _prepare_all(self, tx: DistributedTransaction, names: Sequence[str]) -> None:
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[None] = loop.create_future()
        waiting = len(names)

        async def prepare(branch: Branch) -> Vote:
            nonlocal waiting
            try:
                vote = await branch.prepare()
                self._emit("prepared", tx.xid, branch.name)
                return vote
            finally:
                # The last answer wakes the coordinator directly (no done-callback round).
                waiting -= 1
                if not waiting:
                    _wake(answered)

        self._emit("preparing", tx.xid)
        if not names:
            return
        # Tasks, so that a participant that does not answer in time is left behind (its
        # driver may take long to cancel) rather than waited for.
        tasks = {name: loop.create_task(prepare(tx.branches[name])) for name in names}
        timer = loop.call_later(self.prepare_timeout, _wake, answered)
        try:
            await answered
        finally:
            timer.cancel()
        for name, task in tasks.items():
            if not task.done():
                # A driver may take long to cancel (psycopg asks the server to); the
                # branch is cleaned up in the background (see _abort).
                task.cancel()
                tx._stragglers[name] = task
                tx.votes[name] = None
                tx.reasons[name] = f"no answer to prepare within {self.prepare_timeout:g} s"
                continue
            exc = task.exception()
            if exc is None:
                tx.votes[name] = task.result()
            elif isinstance(exc, MultistoreError) and exc.definite:
                tx.votes[name] = Vote.NO
                tx.reasons[name] = str(exc)
            elif isinstance(exc, MultistoreError):
                tx.votes[name] = None
                tx.reasons[name] = str(exc)
            elif isinstance(exc, Exception):  # not ours: the branch may be prepared
                tx.votes[name] = None
                tx.reasons[name] = f"prepare failed unexpectedly: {type(exc).__name__}: {exc}"
            else:
                raise exc

    async def _abort(self, tx: DistributedTransaction, targets: Sequence[str]) -> NoReturn:
        tx.state = TxState.ABORTING
        await self._rollback(tx, targets)
        tx.state = TxState.ABORTED
        reasons = "; ".join(f"{k}: {v}" for k, v in sorted(tx.reasons.items()))
        raise TransactionAbortedError(
            f"transaction {tx.xid.gtrid} rolled back ({reasons or 'prepare refused'})",
            gtrid=tx.xid.gtrid,
            reasons=tx.reasons,
        )

    async def _rollback(self, tx: DistributedTransaction, names: Sequence[str]) -> None:
        """Best effort: a branch left prepared (participant down) has no commit record,
        so recovery rolls it back (presumed abort)."""

        async def one(name: str) -> None:
            branch = tx.branches[name]
            if name in tx._stragglers:
                self._enter(tx.xid.gtrid)  # left in flight until the straggler is cleaned
                task = asyncio.ensure_future(self._clean_straggler(branch, tx._stragglers[name]))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                return
            # No answer to prepare: the branch may have been prepared all the same.
            unknown = name in tx.votes and tx.votes[name] is None
            try:
                await asyncio.wait_for(branch.rollback(), self.commit_timeout)
            except Exception:
                unknown = True
            if unknown:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        branch.participant.rollback_prepared(branch.xid), self.commit_timeout
                    )

        await asyncio.gather(*(one(name) for name in names))

    async def _clean_straggler(self, branch: Branch, prepare: asyncio.Future[Vote]) -> None:
        """Best effort for a branch whose prepare did not answer in time: wait for the
        cancelled prepare to end, roll back (also a prepared branch of that id), release.
        Whatever is left prepared has no commit record: recovery rolls it back."""
        try:
            await self._clean(branch, prepare)
        finally:
            self._leave(branch.xid.gtrid)

    async def _clean(self, branch: Branch, prepare: asyncio.Future[Vote]) -> None:
        await asyncio.wait({prepare}, timeout=2 * self.commit_timeout)
        if prepare.done() and not prepare.cancelled():
            prepare.exception()  # retrieved: it was reported as "no answer" already
        with contextlib.suppress(Exception):
            await asyncio.wait_for(branch.rollback(), self.commit_timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                branch.participant.rollback_prepared(branch.xid), self.commit_timeout
            )
        await self._release(branch)

    async def _commit_all(
        self, tx: DistributedTransaction, targets: Sequence[str], *, logged: bool
    ) -> None:
        async def one(name: str) -> None:
            branch = tx.branches[name]
            async with asyncio.timeout(self.commit_timeout):
                found = await branch.commit()
                # Gone: committed all the same (a retry after a lost answer) if its
                # commit marker is there; otherwise resolved against the decision.
                found = found or bool(await branch.participant.committed(branch.xid))
            if not found:
                tx.heuristics.append(
                    HeuristicOutcome(
                        tx.xid.gtrid,
                        name,
                        "commit",
                        "the prepared branch was gone when phase 2 reached it "
                        "(resolved outside the coordinator)",
                    )
                )
            self._emit("committed", tx.xid, name)

        results: list[BaseException | None] = [None]
        if len(targets) == 1:  # no task for a single branch
            try:
                await one(targets[0])
            except Exception as exc:
                results = [exc]
        else:
            results = await asyncio.gather(*(one(n) for n in targets), return_exceptions=True)
        pending: dict[str, str] = {}
        for name, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result  # the process is going down (a crash, an interrupt)
                # Whatever failed, the commit decision stands: the outcome is unknown
                # until recovery finishes the branch.
                pending[name] = str(result) or type(result).__name__
        if pending:
            tx.state = TxState.IN_DOUBT
            listed = "; ".join(f"{k}: {v}" for k, v in sorted(pending.items()))
            raise TransactionIndeterminateError(
                f"transaction {tx.xid.gtrid}: commit was decided but not confirmed by "
                f"{sorted(pending)} ({listed}); "
                + (
                    "recovery will commit them"
                    if logged
                    else "with a single prepared branch and no log record, recovery "
                    "rolls it back if it is still prepared"
                ),
                gtrid=tx.xid.gtrid,
                pending=sorted(pending),
            )
        tx.state = TxState.COMMITTED
        if logged:
            records = self.log if tx.holder is None else self.participants[tx.holder].decisions
            assert records is not None  # a holder keeps decisions (see _holder)
            records.forget_later(tx.xid)
        if tx.heuristics:
            raise TransactionHeuristicError(
                f"transaction {tx.xid.gtrid}: heuristic outcome on "
                f"{[h.participant for h in tx.heuristics]}",
                heuristics=tx.heuristics,
            )
