"""The two-phase commit coordinator (presumed abort) and its transaction object.

::

    coordinator = await TransactionCoordinator.open(
        {"orders": "postgresql://…/orders", "payments": "mariadb://…/payments",
         "inventory": "sqlite:///inventory.db"},
        log="sqlite:///.multistore/2pc-log.db", node="shop-1")
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
will commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Self

from multistore.consistency._tpc_errors import (
    HeuristicOutcome,
    TransactionAbortedError,
    TransactionHeuristicError,
    TransactionIndeterminateError,
)
from multistore.consistency._tpc_log import DecisionLog
from multistore.consistency._tpc_participants import (
    Branch,
    Participant,
    SQLBranch,
    open_participant,
)
from multistore.consistency._tpc_recovery import RecoveryReport, recover_once
from multistore.core._tpc import (
    Decision,
    TxState,
    Vote,
    Xid,
    decide,
    last_resource,
    needs_decision_log,
    phase_two_targets,
)
from multistore.errors import DuplicateKeyError, MultistoreError, UsageError
from multistore.urls import StoreURL

__all__ = ["DistributedTransaction", "EventHook", "TransactionCoordinator"]

#: Called at protocol points with (event, xid, participant name or ""):
#: ``preparing`` (phase 1 starts), ``prepared`` (one branch), ``decided`` (commit decided
#: and, if needed, logged), ``committed`` (one branch). For fault injection in tests and the lab.
EventHook = Callable[[str, Xid, str], None]


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class DistributedTransaction:
    """One distributed transaction: ``tx[name]`` is that participant's branch."""

    def __init__(self, xid: Xid, branches: Mapping[str, Branch], holder: str | None = None) -> None:
        self.xid = xid
        self.branches = dict(branches)
        self.holder = holder
        """The last resource (whose own commit records the decision), if any."""
        self.state = TxState.ACTIVE
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

    def sql(self, name: str) -> SQLBranch:
        """The branch on a relational participant, typed as such."""
        branch = self[name]
        if not isinstance(branch, SQLBranch):
            raise UsageError(f"participant {name!r} is not a relational store")
        return branch

    def __repr__(self) -> str:
        return f"<DistributedTransaction {self.xid} {self.state.value}>"


class TransactionCoordinator:
    """Runs distributed transactions over named participants, with a decision log."""

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
    ) -> None:
        Xid(node, "0" * 32)  # validates the node id
        self.participants = dict(participants)
        self.log = log
        self.node = node
        self.prepare_timeout = prepare_timeout
        self.commit_timeout = commit_timeout
        self.last_resource = last_resource
        self.on_event = on_event
        self._holders: dict[tuple[str, ...], str | None] = {}
        """The last resource by the transaction's participant names (it does not depend
        on the transaction id)."""
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls,
        participants: Mapping[str, str | StoreURL | Participant],
        *,
        log: str | StoreURL = "sqlite:///.multistore/2pc-log.db",
        node: str = "node1",
        prepare_timeout: float = 10.0,
        commit_timeout: float = 10.0,
        recover: bool = True,
        on_event: EventHook | None = None,
        last_resource: bool = False,
    ) -> Self:
        """Open the participants (URLs or ready objects) and the log; with ``recover``
        first resolve what this node left in doubt (participants that are down are
        skipped; run :meth:`recover` again later). ``last_resource``: let a PostgreSQL
        or MariaDB branch record the decision by its own commit (module docstring)."""
        opened: dict[str, Participant] = {}
        decision_log: DecisionLog | None = None
        try:
            for name, target in participants.items():
                opened[name] = (
                    target
                    if isinstance(target, Participant)
                    else await open_participant(name, target)
                )
            decision_log = await DecisionLog.open(log)
            self = cls(
                opened,
                decision_log,
                node=node,
                prepare_timeout=prepare_timeout,
                commit_timeout=commit_timeout,
                on_event=on_event,
                last_resource=last_resource,
            )
            if recover:
                await self.recover()
        except BaseException:
            for participant in opened.values():
                with contextlib.suppress(Exception):
                    await participant.close()
            if decision_log is not None:
                await decision_log.close()
            raise
        return self

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=2 * self.commit_timeout)
        for participant in self.participants.values():
            if participant.decisions is not None:
                with contextlib.suppress(Exception):  # recovery forgets them otherwise
                    await participant.decisions.flush()
            with contextlib.suppress(Exception):
                await participant.close()
        await self.log.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def recover(self, *, all_nodes: bool = False) -> RecoveryReport:
        """Resolve in-doubt branches of this node (or of every node) once."""
        return await recover_once(
            self.log, self.participants, node=None if all_nodes else self.node
        )

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
        xid = Xid(self.node, uuid.uuid4().hex)
        holder = self._holder(xid, names) if self.last_resource else None
        tx = DistributedTransaction(xid, await self._begin_all(xid, names, holder or ""), holder)
        try:
            try:
                yield tx
            except BaseException as exc:
                tx.state = TxState.ABORTING
                await self._rollback(tx, list(tx.branches))
                tx.state = TxState.ABORTED
                if isinstance(exc, MultistoreError) and not exc.definite:
                    # A statement timed out or lost its connection: unknown for that
                    # statement, but no branch was prepared, so the transaction is not.
                    raise TransactionAbortedError(
                        f"transaction {xid.gtrid} rolled back: a statement failed: {exc}",
                        gtrid=xid.gtrid,
                    ) from exc
                raise
            await self._complete(tx)
        finally:
            # Every branch is finished here (committed, prepared or rolled back), so a
            # release only hands the connection back: one after the other, no tasks.
            for name, branch in tx.branches.items():
                if name not in tx._stragglers:
                    await self._release(branch)

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
            except MultistoreError as exc:
                if exc.definite:
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
        except (MultistoreError, TimeoutError) as exc:
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
        except (MultistoreError, TimeoutError) as exc:
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
            else:
                raise exc

    async def _abort(self, tx: DistributedTransaction, targets: Sequence[str]) -> None:
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
                task = asyncio.ensure_future(self._clean_straggler(branch, tx._stragglers[name]))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                return
            # No answer to prepare: the branch may have been prepared all the same.
            unknown = name in tx.votes and tx.votes[name] is None
            try:
                await asyncio.wait_for(branch.rollback(), self.commit_timeout)
            except (MultistoreError, TimeoutError):
                unknown = True
            if unknown:
                with contextlib.suppress(MultistoreError, TimeoutError):
                    await asyncio.wait_for(
                        branch.participant.rollback_prepared(branch.xid), self.commit_timeout
                    )

        await asyncio.gather(*(one(name) for name in names))

    async def _clean_straggler(self, branch: Branch, prepare: asyncio.Future[Vote]) -> None:
        """Best effort for a branch whose prepare did not answer in time: wait for the
        cancelled prepare to end, roll back (also a prepared branch of that id), release.
        Whatever is left prepared has no commit record: recovery rolls it back."""
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
            except (MultistoreError, TimeoutError) as exc:
                results = [exc]
        else:
            results = await asyncio.gather(*(one(n) for n in targets), return_exceptions=True)
        pending: dict[str, str] = {}
        for name, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, MultistoreError | TimeoutError):
                    raise result
                pending[name] = str(result) or "timeout"
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
