"""The recovery manager: resolve in-doubt branches from the decision log.

One pass (:func:`recover_once`), in this order:

1. Read the commit and abort records: the log's, and those of every participant that
   keeps the records of transactions it was the last resource of.
2. *Then* ask every participant for its in-doubt (prepared, unresolved) branches; a
   participant that cannot be reached is listed in ``unreachable`` and retried later.
   Reading the records first is what makes step 4 safe beside a live coordinator: a
   branch of a recorded transaction was prepared before its record was written, so it
   is either in this listing or finished — never missed.
3. Keep the branches this log decides: their id names this log (or, for an id written
   before logs had ids, a node this log knows). Others are reported by name
   (``other_logs``) and left alone: presumed abort is sound only for the log that
   decided. Take the lease of each node concerned (see ``_tpc_nodes``): a node whose
   lease a live coordinator holds is skipped (``skipped``) — that coordinator finishes
   its own transactions — unless it is the caller's (``owner``), in which case the
   caller's transactions still under way (``in_flight``) are skipped instead.
4. For each branch kept: commit it when a commit is recorded; otherwise record abort
   first (so a coordinator still in phase 1 cannot log commit afterwards) and roll it
   back — presumed abort. A branch whose id names a last resource (``…@<holder>``)
   finds its decision in that participant's table instead, and the abort is written
   there; while that participant cannot be asked, the branch stays in doubt. A branch
   that cannot be applied as prepared (:class:`BranchHazardError`) is reported as a
   heuristic hazard and stays in doubt; one bad branch never stops the others.
5. Forget the commit records read in step 1 whose branches are all finished — after
   checking each one committed (a branch without its commit marker was lost or rolled
   back by hand: a heuristic outcome); purge old abort records, and old commit markers
   of the nodes recovered here (never another node's: its records are not read here).
6. Give back the leases taken in step 3.

A branch that disappears between listing and resolving it is checked against its
commit marker: reported as heuristic only when its fate contradicts the decision.
:func:`recover_transactions` opens participants and the log from URLs and repeats the
pass until everything is resolved or ``retry_for`` seconds have passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from multistore.consistency._tpc_errors import BranchHazardError, HeuristicOutcome
from multistore.consistency._tpc_log import DecisionLog, LogRecord
from multistore.consistency._tpc_nodes import NodeBusyError, NodeLease, new_owner
from multistore.consistency._tpc_participants import Participant, open_participant
from multistore.core._tpc import Decision, Xid, resolve_in_doubt
from multistore.errors import MultistoreError, StoreTimeoutError, StoreUnavailableError
from multistore.urls import StoreURL

__all__ = ["LEASE_TTL", "RecoveryReport", "recover_once", "recover_transactions"]

#: Abort records are kept this long, far past any coordinator's prepare timeout.
ABORT_RETENTION = 3600.0
#: How long a recovery run holds the lease of a node it recovers (renewed each pass).
LEASE_TTL = 15.0


@dataclass
class RecoveryReport:
    """What one or more recovery passes did. Branch ids are ``str(xid)``."""

    log: str = ""
    """The log read: ``log <id> at <url>``."""
    checked: list[str] = field(default_factory=list)
    """Participants whose in-doubt branches were listed."""
    nodes: list[str] = field(default_factory=list)
    """Coordinator nodes whose branches and records this run handled."""
    committed: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    heuristics: list[HeuristicOutcome] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    """Participants that could not be asked or told (name -> error)."""
    pending: list[str] = field(default_factory=list)
    """Global ids of commit decisions that some participant has not confirmed yet."""
    forgotten: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """Nodes left to their live coordinator (node -> why)."""
    live_branches: list[str] = field(default_factory=list)
    """In-doubt branches of those nodes, left to their coordinators."""
    other_logs: dict[str, str] = field(default_factory=dict)
    """In-doubt branches this log does not decide (branch id -> which log does)."""
    log_locations: dict[str, str] = field(default_factory=dict)
    """The logs that decide ``other_logs`` (log id -> location, "" if no participant
    knows it; the empty id for branches written before logs had ids)."""

    @property
    def resolved(self) -> bool:
        """True when nothing this run could see is left in doubt, except what live
        coordinators hold: no participant unreachable, no commit decision pending (a
        hazard keeps its decision pending), no branch of another log."""
        return not self.unreachable and not self.pending and not self.other_logs

    def merge(self, other: RecoveryReport) -> None:
        self.log = other.log
        self.checked = sorted(set(self.checked) | set(other.checked))
        self.nodes = sorted(set(self.nodes) | set(other.nodes))
        self.committed += other.committed
        self.rolled_back += other.rolled_back
        self.heuristics += [h for h in other.heuristics if h not in self.heuristics]
        self.forgotten += other.forgotten
        self.unreachable = dict(other.unreachable)
        self.pending = list(other.pending)
        self.skipped = dict(other.skipped)
        self.live_branches = list(other.live_branches)
        self.other_logs = dict(other.other_logs)
        self.log_locations = dict(other.log_locations)

    def as_dict(self) -> dict[str, Any]:
        return {
            "log": self.log,
            "checked": list(self.checked),
            "nodes": list(self.nodes),
            "committed": list(self.committed),
            "rolled_back": list(self.rolled_back),
            "heuristics": [h.as_dict() for h in self.heuristics],
            "unreachable": dict(self.unreachable),
            "pending": list(self.pending),
            "forgotten": list(self.forgotten),
            "skipped": dict(self.skipped),
            "live_branches": list(self.live_branches),
            "other_logs": dict(self.other_logs),
            "log_locations": dict(self.log_locations),
            "resolved": self.resolved,
        }


class _HolderDown(Exception):
    """The participant that holds a branch's decision cannot be asked."""


@dataclass
class _Pass:
    """The state of one recovery pass."""

    log: DecisionLog
    participants: Mapping[str, Participant]
    owner: str
    in_flight: Collection[str]
    report: RecoveryReport
    leases: dict[str, NodeLease]
    claimed: set[str] = field(default_factory=set)
    still: set[str] = field(default_factory=set)
    """Transactions with a branch left in doubt (their records must stay)."""
    decisions: dict[tuple[str, str], Decision] = field(default_factory=dict)

    def owns(self, xid: Xid, logged: Collection[str] = ()) -> bool:
        return self.log.owns(xid, set(self.leases)) or xid.gtrid in logged

    def mine(self, xid: Xid) -> bool:
        """A branch this pass may resolve: this log's, of a node held here."""
        return self.owns(xid) and xid.node in self.claimed


async def recover_once(
    log: DecisionLog,
    participants: Mapping[str, Participant],
    *,
    node: str | None = None,
    owner: str | None = None,
    in_flight: Collection[str] = (),
    lease_ttl: float = LEASE_TTL,
    retention: float = ABORT_RETENTION,
) -> RecoveryReport:
    """One recovery pass over ``participants`` with ``log`` (module docstring).

    ``node``: only that coordinator node's branches; :class:`NodeBusyError` when a
    live coordinator (other than ``owner``) holds it. None: every node whose lease is
    free, and ``owner``'s. ``owner``: the caller's lease token (a live coordinator's:
    its own nodes are held already); ``in_flight``: global ids of its transactions
    still under way, left alone — a live collection, asked when each branch is reached
    (a transaction enters it before it prepares anything and leaves it when done).
    ``retention``: age (s) past which abort records and commit markers go."""
    report = RecoveryReport(log=log.describe())
    leases = await log.nodes.leases()
    run = _Pass(log, participants, owner or new_owner("recovery"), in_flight, report, leases)
    if node is not None:
        _check_free(run, node)

    # 1. The records first, then (2.) the listing: see the module docstring.
    sources: list[tuple[str, DecisionLog, list[LogRecord]]] = [("", log, await log.records())]
    for name, participant in participants.items():
        if participant.decisions is not None:
            try:
                sources.append((name, participant.decisions, await participant.decisions.records()))
            except MultistoreError as exc:
                report.unreachable[name] = str(exc)
    names = list(participants)
    listings = await asyncio.gather(
        *(participants[n].in_doubt() for n in names), return_exceptions=True
    )
    in_doubt: dict[str, list[Xid]] = {}
    for name, listing in zip(names, listings, strict=True):
        if isinstance(listing, MultistoreError):
            report.unreachable[name] = str(listing)
        elif isinstance(listing, BaseException):
            raise listing
        else:
            in_doubt[name] = listing
            report.checked.append(name)

    # 3. Which branches and records are this log's, and whose nodes can be taken.
    logged = {r.gtrid for r in sources[0][2]}
    wanted: set[str] = set()
    """Nodes with something to do here: each is this log's (its id names the log, a
    record is in the log, or the log knows the node), so its lease may be created."""
    for xids in in_doubt.values():
        for xid in xids:
            if run.owns(xid, logged):
                wanted.add(xid.node)
            else:
                report.other_logs[str(xid)] = await _whose(run, xid)
    for holder, _, records in sources:
        for record in records:
            parsed = Xid.try_parse(record.gtrid)
            if parsed is not None and (not holder or run.owns(parsed)):
                wanted.add(parsed.node)
    if node is not None:
        # Only a node this log has seen: naming another must not make its old-style
        # branches (ids without a log id) this log's.
        wanted = {node} & (wanted | set(run.leases))
    try:
        await _claim(run, wanted, lease_ttl, strict=node is not None)
        report.nodes = sorted(run.claimed)

        # 4. Resolve the branches.
        for name, xids in in_doubt.items():
            await _resolve_all(run, name, [x for x in xids if run.owns(x, logged)])
        for name, xids in in_doubt.items():
            if name in report.unreachable:
                run.still.update(x.gtrid for x in xids)

        # 5. Forget finished records; purge.
        keep: set[str] = set()
        for holder, records_log, records in sources:
            if holder in report.unreachable:
                continue
            ours = [r for r in records if _record_is(run, r, holder)]
            await _finish_records(ours, holder, records_log, run, in_doubt)
            keep.update(
                str(Xid.parse(r.gtrid).for_branch(p, holder))
                for r in records
                if r.decision is Decision.COMMIT
                for p in r.participants
            )
            with contextlib.suppress(MultistoreError):
                await records_log.purge_aborts(retention)
        for name in in_doubt:
            if name not in report.unreachable:
                with contextlib.suppress(MultistoreError):
                    await participants[name].purge_markers(retention, keep, run.mine)
    finally:
        # 6. Give back the leases taken here (not the caller's own).
        for taken in run.claimed - _held(run):
            with contextlib.suppress(MultistoreError):
                await log.nodes.release(taken, run.owner)
    return report


def _held(run: _Pass) -> set[str]:
    """Nodes the caller held before this pass."""
    return {n for n, lease in run.leases.items() if lease.owner == run.owner and lease.live}


def _check_free(run: _Pass, node: str) -> None:
    lease = run.leases.get(node)
    if lease is not None and lease.live and lease.owner != run.owner:
        raise NodeBusyError(
            f"{lease.describe()}: it recovers its own transactions; "
            f"stop it first, or recover without naming the node to leave it alone"
        )


async def _claim(run: _Pass, wanted: set[str], ttl: float, *, strict: bool) -> None:
    for node in sorted(wanted):
        if await run.log.nodes.acquire(node, run.owner, ttl):
            run.claimed.add(node)
            continue
        run.leases = await run.log.nodes.leases()
        if strict:
            _check_free(run, node)
        lease = run.leases.get(node)
        run.report.skipped[node] = (
            lease.describe() if lease is not None else f"node {node!r} is held by another run"
        )


async def _whose(run: _Pass, xid: Xid) -> str:
    """Which log decides ``xid``, in words, for a branch this log does not decide."""
    if not xid.log:
        run.report.log_locations.setdefault("", "")
        return (
            f"written before logs had ids by node {xid.node!r}, which {run.log.describe()} "
            "has never seen: recover it with its coordinator's log"
        )
    known: dict[str, str] = {}
    participant = run.participants.get(xid.branch)
    if participant is not None:
        with contextlib.suppress(MultistoreError):
            known = await participant.known_logs()
    location = known.get(xid.log, "")
    if location or xid.log not in run.report.log_locations:
        run.report.log_locations[xid.log] = location
    where = f" at {location}" if location else " (location unknown)"
    return f"belongs to log {xid.log}{where}, not {run.log.describe()}"


def _record_is(run: _Pass, record: LogRecord, holder: str) -> bool:
    """A record this pass may act on: of a node held here, not under way."""
    xid = Xid.try_parse(record.gtrid)
    if xid is None or xid.node not in run.claimed or record.gtrid in run.in_flight:
        return False
    return not holder or run.owns(xid)


async def _resolve_all(run: _Pass, name: str, xids: Sequence[Xid]) -> None:
    report = run.report
    participant = run.participants[name]
    for xid in xids:
        if xid.node not in run.claimed:
            if xid.node in report.skipped:
                report.live_branches.append(str(xid))  # its live coordinator finishes it
            continue  # (or another node than the one asked for)
        if xid.gtrid in run.in_flight:
            run.still.add(xid.gtrid)  # the caller's own transaction, still under way
            continue
        try:
            decision = await _decision(run, xid)
        except _HolderDown as down:
            report.unreachable.setdefault(xid.holder, str(down))
            run.still.add(xid.gtrid)
            continue
        try:
            if decision is Decision.COMMIT:
                found = await participant.commit_prepared(xid)
            else:
                found = await participant.rollback_prepared(xid)
        except BranchHazardError as exc:
            run.still.add(xid.gtrid)
            report.heuristics.append(
                HeuristicOutcome(xid.gtrid, name, decision.value, str(exc), hazard=True)
            )
            continue
        except MultistoreError as exc:
            if isinstance(exc, StoreUnavailableError | StoreTimeoutError) or not exc.definite:
                report.unreachable[name] = str(exc)  # down or busy: the rest would fail too
                run.still.update(x.gtrid for x in xids)
                return
            run.still.add(xid.gtrid)  # this branch only: the others go on
            report.heuristics.append(
                HeuristicOutcome(
                    xid.gtrid,
                    name,
                    decision.value,
                    f"branch {xid} could not be resolved: {exc}",
                    hazard=True,
                )
            )
            continue
        if found:
            done = report.committed if decision is Decision.COMMIT else report.rolled_back
            done.append(str(xid))
            continue
        # Gone between listing and resolving: fine if its fate matches the decision.
        with contextlib.suppress(MultistoreError):
            if await participant.committed(xid) is (decision is Decision.COMMIT):
                continue
        report.heuristics.append(
            HeuristicOutcome(
                xid.gtrid,
                name,
                decision.value,
                f"branch {xid} was listed in doubt but was gone when recovery resolved it "
                f"(resolved outside this recovery manager, not as decided: {decision.value})",
            )
        )


async def _decision(run: _Pass, xid: Xid) -> Decision:
    """The decision for in-doubt branch ``xid``: from the coordinator's log, or from the
    last resource its id names. With none recorded, abort is recorded first (so a
    coordinator still in phase 1 cannot commit afterwards) — presumed abort."""
    key = (xid.holder, xid.gtrid)
    if key in run.decisions:
        return run.decisions[key]
    records = run.log
    if xid.holder:
        holder = run.participants.get(xid.holder)
        if holder is None or holder.decisions is None:
            raise _HolderDown(
                f"holds the decision of branch {xid} but is not configured in this recovery run"
            )
        records = holder.decisions
    try:
        logged = await records.decision(xid)
        if logged is None:
            logged = await records.log_abort(xid)
    except MultistoreError as exc:
        if xid.holder:
            raise _HolderDown(str(exc)) from exc
        raise
    run.decisions[key] = resolve_in_doubt(logged)
    return run.decisions[key]


async def _finish_records(
    records: Sequence[LogRecord],
    holder: str,
    records_log: DecisionLog,
    run: _Pass,
    in_doubt: Mapping[str, Sequence[Xid]],
) -> None:
    """Forget the commit records whose branches are all finished, after checking each
    one committed (a heuristic outcome otherwise)."""
    report = run.report
    for record in records:
        if record.decision is not Decision.COMMIT:
            continue
        waiting = [p for p in record.participants if p not in in_doubt or p in report.unreachable]
        if waiting or record.gtrid in run.still:
            report.pending.append(record.gtrid)
            for p in waiting:
                report.unreachable.setdefault(p, "not configured in this recovery run")
            continue
        xid = Xid.parse(record.gtrid)
        try:
            await _check_committed(xid, holder, record.participants, run)
        except MultistoreError as exc:
            report.pending.append(record.gtrid)
            report.unreachable.setdefault("?", str(exc))
            continue
        await records_log.forget(xid)
        report.forgotten.append(record.gtrid)


async def _check_committed(xid: Xid, holder: str, names: Sequence[str], run: _Pass) -> None:
    """A finished commit decision: every branch must have its commit marker; one without
    it was lost or rolled back outside the coordinator (a heuristic outcome)."""
    for name in names:
        branch = xid.for_branch(name, holder)
        if str(branch) in run.report.committed:
            continue
        if await run.participants[name].committed(branch) is False:
            run.report.heuristics.append(
                HeuristicOutcome(
                    xid.gtrid,
                    name,
                    Decision.COMMIT.value,
                    f"branch {branch} was decided commit but {name} has neither the prepared "
                    "branch nor its commit marker: it was lost or rolled back outside the "
                    "coordinator",
                )
            )


async def recover_transactions(
    participants: Mapping[str, str | StoreURL],
    log: str | StoreURL | None = None,
    *,
    node: str | None = None,
    retry_for: float = 0.0,
    retry_interval: float = 0.5,
) -> dict[str, Any]:
    """Resolve every in-doubt 2PC branch of ``participants`` (name -> store URL) that the
    decision log at ``log`` decides (None: the config's ``transactions`` role, where a
    coordinator opened without a log keeps it); only ``node``'s branches when given.
    Participants that are down, and nodes whose coordinator still holds its lease while
    they have branches in doubt (a crashed coordinator's lease runs out after its
    ``lease_ttl``), are retried every ``retry_interval`` seconds for up to ``retry_for``
    seconds.
    Returns :meth:`RecoveryReport.as_dict` (``resolved`` False if anything is left);
    :class:`NodeBusyError` if ``node`` stays held by a live coordinator."""
    deadline = time.monotonic() + retry_for
    report = RecoveryReport()
    owner = new_owner("recovery")
    decision_log = await DecisionLog.open(log)
    opened: dict[str, Participant] = {}
    try:
        while True:
            down: dict[str, str] = {}
            for name, url in participants.items():
                if name not in opened:
                    try:
                        opened[name] = await open_participant(name, url)
                    except MultistoreError as exc:
                        down[name] = str(exc)
            try:
                one = await recover_once(decision_log, opened, node=node, owner=owner)
            except NodeBusyError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(retry_interval)
                continue
            one.unreachable.update(down)
            if down:
                one.pending = sorted(set(one.pending))
            report.merge(one)
            done = report.resolved and not down and not one.live_branches
            if done or time.monotonic() >= deadline:
                break
            for name in list(one.unreachable):
                participant = opened.pop(name, None)
                if participant is not None:
                    with contextlib.suppress(Exception):
                        await participant.close()
            await asyncio.sleep(retry_interval)
    finally:
        for participant in opened.values():
            with contextlib.suppress(Exception):
                await participant.close()
        await decision_log.close()
    return report.as_dict()
