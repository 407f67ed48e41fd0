"""The recovery manager: resolve in-doubt branches from the decision log.

One pass (:func:`recover_once`):

1. Ask every participant for its in-doubt (prepared, unresolved) multistore branches;
   a participant that cannot be reached is listed in ``unreachable`` and retried later.
2. For each branch (of one coordinator node, or of all): commit it when the log holds a
   commit decision; otherwise log abort first (so a coordinator still in phase 1 cannot
   log commit afterwards) and roll it back — presumed abort. A branch whose id names a
   last resource (``…@<holder>``) finds its decision in that participant's table
   instead, and the abort is written there (where it makes a last-resource commit
   still under way fail on the duplicate key); while that participant cannot be asked
   the branch stays in doubt.
3. Forget commit records (in the log and in each last resource's table) whose
   participants all answered and hold none of the transaction's branches any more —
   after checking each branch left its commit marker (a branch without one was lost or
   rolled back by hand: a heuristic outcome); purge old abort records and old commit
   markers.

A branch that disappears between listing and resolving it, or a commit that finds no
branch, is a heuristic outcome and is reported, never dropped.
:func:`recover_transactions` opens participants and the log from URLs and repeats the
pass until everything is resolved or ``retry_for`` seconds have passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from multistore.consistency._tpc_errors import HeuristicOutcome
from multistore.consistency._tpc_log import DecisionLog, LogRecord
from multistore.consistency._tpc_participants import Participant, open_participant
from multistore.core._tpc import Decision, Xid, resolve_in_doubt
from multistore.errors import MultistoreError
from multistore.urls import StoreURL

__all__ = ["RecoveryReport", "recover_once", "recover_transactions"]

#: Abort records are kept this long, far past any coordinator's prepare timeout.
ABORT_RETENTION = 3600.0


@dataclass
class RecoveryReport:
    """What one or more recovery passes did. Branch ids are ``str(xid)``."""

    committed: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    heuristics: list[HeuristicOutcome] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    """Participants that could not be asked or told (name -> error)."""
    pending: list[str] = field(default_factory=list)
    """Global ids of commit decisions that some participant has not confirmed yet."""
    forgotten: list[str] = field(default_factory=list)

    @property
    def resolved(self) -> bool:
        """True when nothing is left to do (no unreachable participant, nothing pending)."""
        return not self.unreachable and not self.pending

    def merge(self, other: RecoveryReport) -> None:
        self.committed += other.committed
        self.rolled_back += other.rolled_back
        self.heuristics += other.heuristics
        self.forgotten += other.forgotten
        self.unreachable = dict(other.unreachable)
        self.pending = list(other.pending)

    def as_dict(self) -> dict[str, Any]:
        return {
            "committed": list(self.committed),
            "rolled_back": list(self.rolled_back),
            "heuristics": [h.as_dict() for h in self.heuristics],
            "unreachable": dict(self.unreachable),
            "pending": list(self.pending),
            "forgotten": list(self.forgotten),
            "resolved": self.resolved,
        }


async def recover_once(
    log: DecisionLog, participants: Mapping[str, Participant], *, node: str | None = None
) -> RecoveryReport:
    """One recovery pass over ``participants`` (branches of ``node`` only, if given)."""
    report = RecoveryReport()
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
            in_doubt[name] = [x for x in listing if node is None or x.node == node]

    still: set[str] = set()
    """Transactions with a branch left in doubt (their records must stay)."""
    decisions: dict[tuple[str, str], Decision] = {}
    for name, xids in in_doubt.items():
        participant = participants[name]
        for xid in xids:
            try:
                decision = await _decision(log, participants, xid, decisions)
            except _HolderDown as down:
                report.unreachable.setdefault(xid.holder, str(down))
                still.add(xid.gtrid)
                continue
            except MultistoreError as exc:
                report.unreachable[name] = str(exc)
                break
            try:
                if decision is Decision.COMMIT:
                    found = await participant.commit_prepared(xid)
                else:
                    found = await participant.rollback_prepared(xid)
            except MultistoreError as exc:
                report.unreachable[name] = str(exc)
                break
            if found:
                done = report.committed if decision is Decision.COMMIT else report.rolled_back
                done.append(str(xid))
            else:
                report.heuristics.append(
                    HeuristicOutcome(
                        xid.gtrid,
                        name,
                        decision.value,
                        f"branch {xid} was listed in doubt but was gone when recovery "
                        "resolved it (resolved outside this recovery manager)",
                    )
                )

    for name, xids in in_doubt.items():
        if name in report.unreachable:
            still.update(x.gtrid for x in xids)
    # The coordinator's log, then the records of last resources ("" names the log).
    sources: list[tuple[str, DecisionLog]] = [("", log)]
    for name, participant in participants.items():
        if participant.decisions is not None and name in in_doubt:
            sources.append((name, participant.decisions))
    keep: set[str] = set()
    for holder, records_log in sources:
        if holder in report.unreachable:
            continue
        try:
            records = await records_log.records(node)
        except MultistoreError as exc:
            if not holder:
                raise
            report.unreachable[holder] = str(exc)
            continue
        await _finish_records(records, holder, records_log, participants, in_doubt, still, report)
        keep.update(
            str(Xid.parse(r.gtrid).for_branch(p, holder))
            for r in records
            if r.decision is Decision.COMMIT
            for p in r.participants
        )
        with contextlib.suppress(MultistoreError):
            await records_log.purge_aborts(ABORT_RETENTION)
    for name in in_doubt:
        if name not in report.unreachable:
            with contextlib.suppress(MultistoreError):
                await participants[name].purge_markers(ABORT_RETENTION, keep)
    return report


class _HolderDown(Exception):
    """The participant that holds a branch's decision cannot be asked."""


async def _decision(
    log: DecisionLog,
    participants: Mapping[str, Participant],
    xid: Xid,
    known: dict[tuple[str, str], Decision],
) -> Decision:
    """The decision for in-doubt branch ``xid``: from the coordinator's log, or from the
    last resource its id names. With none recorded, abort is recorded first (so a
    coordinator still in phase 1 cannot commit afterwards) — presumed abort."""
    key = (xid.holder, xid.gtrid)
    if key in known:
        return known[key]
    records = log
    if xid.holder:
        holder = participants.get(xid.holder)
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
    known[key] = resolve_in_doubt(logged)
    return known[key]


async def _finish_records(
    records: Sequence[LogRecord],
    holder: str,
    records_log: DecisionLog,
    participants: Mapping[str, Participant],
    in_doubt: Mapping[str, Sequence[Xid]],
    still: set[str],
    report: RecoveryReport,
) -> None:
    """Forget the commit records whose branches are all finished, after checking each
    one committed (a heuristic outcome otherwise)."""
    for record in records:
        if record.decision is not Decision.COMMIT:
            continue
        waiting = [p for p in record.participants if p not in in_doubt or p in report.unreachable]
        if waiting or record.gtrid in still:
            report.pending.append(record.gtrid)
            for p in waiting:
                report.unreachable.setdefault(p, "not configured in this recovery run")
            continue
        xid = Xid.parse(record.gtrid)
        try:
            await _check_committed(xid, holder, record.participants, participants, report)
        except MultistoreError as exc:
            report.pending.append(record.gtrid)
            report.unreachable.setdefault("?", str(exc))
            continue
        await records_log.forget(xid)
        report.forgotten.append(record.gtrid)


async def _check_committed(
    xid: Xid,
    holder: str,
    names: Sequence[str],
    participants: Mapping[str, Participant],
    report: RecoveryReport,
) -> None:
    """A finished commit decision: every branch must have its commit marker; one without
    it was lost or rolled back outside the coordinator (a heuristic outcome)."""
    for name in names:
        branch = xid.for_branch(name, holder)
        if str(branch) in report.committed:
            continue
        if await participants[name].committed(branch) is False:
            report.heuristics.append(
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
    log: str | StoreURL,
    *,
    node: str | None = None,
    retry_for: float = 0.0,
    retry_interval: float = 0.5,
) -> dict[str, Any]:
    """Resolve every in-doubt 2PC branch of ``participants`` (name -> store URL) with the
    decision log at ``log``; only ``node``'s branches when given. Participants that are
    down are retried every ``retry_interval`` seconds for up to ``retry_for`` seconds.
    Returns :meth:`RecoveryReport.as_dict` (``resolved`` False if anything is left)."""
    deadline = time.monotonic() + retry_for
    report = RecoveryReport()
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
            one = await recover_once(decision_log, opened, node=node)
            one.unreachable.update(down)
            if down:
                one.pending = sorted(set(one.pending))
            report.merge(one)
            if (report.resolved and not down) or time.monotonic() >= deadline:
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
