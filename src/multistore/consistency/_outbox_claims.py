"""The relay's side of the outbox table: claims with leases, renewals, outcomes.

Every read and write here is for one owner (a relay's ``worker_id``). A claim takes
the *head* of each aggregate it can (its lowest event not yet delivered, if that one
is pending, due, and not leased by a live relay) and the pending events right after
it, and leases them all. It says which of them another run had leased before and left
without an outcome (that run died, was cut off, or lost its lease): their aggregates
are delivered with a record before each event (:meth:`Leases.start`). Every later
write is fenced on the owner.

- PostgreSQL: one statement; the heads are looked for among the oldest due events
  (and among all only when none of those is one), selected ``FOR UPDATE SKIP
  LOCKED``, and the lease is written by an ``UPDATE … RETURNING``
  (``event_id = ANY(array)`` in the other statements, so their text does not depend
  on the batch). The same statement can first mark the batch before delivered.
- MariaDB: a ``READ COMMITTED`` transaction (no gap locks) with ``SKIP LOCKED``.
- SQLite: a ``BEGIN IMMEDIATE`` transaction; the write lock serialises claimers.

Leases and retry times are written and compared on the database's clock where it has
one (PostgreSQL, MariaDB: inside each statement); on SQLite on the outbox's ``clock``
(see :mod:`multistore.consistency._log_clock`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from multistore.consistency._outbox import EVENT_COLUMNS, Outbox, OutboxEvent, in_marks
from multistore.stores.relational import Row, Transaction

__all__ = ["Claimed", "Finished", "Leases", "Outcome", "by_aggregate"]

Statement = tuple[str, dict[str, Any]]

_DUE = (
    "{o}.state = 'pending' AND ({o}.owner IS NULL OR {o}.owner = :owner "
    "OR {o}.lease_until < {now}) AND ({o}.next_attempt_at IS NULL OR {o}.next_attempt_at <= {now})"
)
_HEAD = (
    _DUE.format(o="o", now="{now}")
    + " AND NOT EXISTS (SELECT 1 FROM {t} p WHERE p.aggregate = o.aggregate "
    "AND p.state IN ('pending', 'parked') AND p.seq < o.seq{done})"
)

#: PostgreSQL looks for heads among the oldest ``WINDOW * limit`` events that are due
#: (and, only when none of those is a head, among all of them), so a claim reads a
#: few hundred rows however long the backlog of a few aggregates.
WINDOW = 2
_FIRST = "AND o.event_id = ANY(ARRAY(SELECT event_id FROM first))"


def _delivered_sql(table: str, counted: str, more: str) -> str:
    """Mark the events in the array ``:<counted>`` delivered (``more``: " + 1" to
    count the attempt), fenced on the owner."""
    return (
        f"UPDATE {table} SET state = 'delivered', delivered_at = :now, owner = NULL, "
        f"lease_until = NULL, next_attempt_at = NULL, attempts = attempts{more} "
        f"WHERE owner = :owner AND event_id = ANY(:{counted})"
    )


def _pg_claim(table: str, now: str, *, chained: bool = False) -> str:
    """One statement: lock the heads, add up to ``ceil(limit / heads)`` events of each
    aggregate (nearest to its head first, at most ``limit`` in all), lease them.

    The heads are the oldest among the first ``WINDOW * limit`` due events (``near``:
    of each aggregate only its first event there can be one, so only those are
    looked at); only if that window holds none (its aggregates are all blocked or leased) does
    the claim search every due event (``far``), so no head waits for ever behind
    blocked events. Either way the heads are the oldest claimable ones in what was
    searched, and a head beyond the window moves into it as older events go.

    ``chained``: the statement first marks the events in ``:done`` delivered (the
    batch before, every event of it delivered). All parts of one statement read the
    same snapshot, from before that mark, so the claim leaves those events out
    itself: none is taken again, and those the mark changed (``done``) no longer
    count as open in front of their aggregate's next event."""
    if chained:
        mark = f"done AS ({_delivered_sql(table, 'done', ' + 1')} RETURNING event_id), "
        fresh = " AND NOT ({o}.event_id = ANY(:done))"
        probe = " AND p.event_id NOT IN (SELECT event_id FROM done)"
    else:
        mark = fresh = probe = ""
    head = _HEAD.format(t=table, now=now, done=probe) + fresh.format(o="o")
    heads = (
        f"SELECT o.event_id, o.aggregate, o.seq FROM {table} o WHERE {head} "
        "{more} ORDER BY o.event_id LIMIT :limit FOR UPDATE SKIP LOCKED"
    )
    due = _DUE.format(o="w", now=now) + fresh.format(o="w")
    return (
        f"WITH {mark}win AS (SELECT w.event_id, w.aggregate, w.seq FROM {table} w "
        f"WHERE {due} ORDER BY w.event_id LIMIT {WINDOW} * :limit), "
        # Only an aggregate's first event in the window can be its head.
        "first AS (SELECT DISTINCT ON (aggregate) event_id FROM win ORDER BY aggregate, seq), "
        f"near AS ({heads.format(more=_FIRST)}), "
        f"far AS ({heads.format(more='AND NOT EXISTS (SELECT 1 FROM near)')}), "
        "heads AS (SELECT * FROM near UNION ALL SELECT * FROM far), "
        "per AS (SELECT (:limit + GREATEST(COUNT(*), 1) - 1) / GREATEST(COUNT(*), 1) AS n "
        "FROM heads), "
        "batch AS (SELECT f.event_id, f.taken FROM heads h CROSS JOIN per "
        "CROSS JOIN LATERAL (SELECT f.event_id, f.seq, f.owner IS NOT NULL AS taken "
        f"FROM {table} f "
        "WHERE f.aggregate = h.aggregate AND f.state = 'pending' AND f.seq >= h.seq"
        f"{fresh.format(o='f')} ORDER BY f.seq LIMIT per.n) f "
        "ORDER BY f.seq - h.seq, h.event_id LIMIT :limit) "
        f"UPDATE {table} AS e SET owner = :owner, lease_until = {now} + :lease "
        # The array gives the planner an index lookup of the batch's rows.
        "FROM batch b WHERE e.event_id = b.event_id "
        "AND e.event_id = ANY(ARRAY(SELECT event_id FROM batch)) "
        "RETURNING e.event_id, e.aggregate, e.seq, e.event_type, e.payload, e.created_at, "
        "e.attempts, b.taken"
    )


@dataclass(frozen=True)
class Claimed:
    """An event of a claim. ``taken``: another run had leased it and left it without
    an outcome, so it may have been handed over already (which of the events of
    that run's batch was in the handler when it stopped is not known)."""

    event: OutboxEvent
    taken: bool


@dataclass(frozen=True)
class Outcome:
    """How one event's delivery ended, other than delivered."""

    event_id: str
    attempts: int
    error: str
    retry_in: float | None
    """Seconds until the event is due again; None: parked."""


@dataclass(frozen=True)
class Finished:
    """What became of a batch, to record (:meth:`Leases.finish`)."""

    held: Collection[str]
    """The events still leased to the relay."""
    delivered: Sequence[str]
    """Handled; one more attempt each when marked."""
    outcomes: Sequence[Outcome] = ()
    started: Sequence[str] = ()
    """Handled, with their attempt recorded before (:meth:`Leases.start`)."""

    def all_delivered(self) -> bool:
        """Every held event was delivered, nothing else to record."""
        return not self.outcomes and not self.started and len(self.delivered) == len(self.held)


def _claimed(values: tuple[Any, ...]) -> Claimed:
    """A claimed row (``EVENT_COLUMNS``, then ``taken``), read by position."""
    event_id, aggregate, seq, event_type, payload, created_at, attempts, taken = values
    event = OutboxEvent(
        str(event_id),
        str(aggregate),
        int(seq),
        str(event_type),
        json.loads(payload),
        float(created_at),
        int(attempts) + 1,
    )
    return Claimed(event, bool(taken))


class Leases:
    """The outbox table as one relay (``owner``) reads and writes it."""

    def __init__(self, outbox: Outbox, owner: str) -> None:
        self.outbox = outbox
        self.owner = owner
        self._now = outbox.time.sql
        postgres = outbox.backend == "postgresql"
        self._claim_sql = _pg_claim(outbox.table, self._now) if postgres else ""
        self._chained_sql = _pg_claim(outbox.table, self._now, chained=True) if postgres else ""

    def _ids(self, params: dict[str, Any], name: str, ids: Sequence[str]) -> str:
        """A condition ``event_id`` in ``ids``: one array parameter on PostgreSQL (one
        statement text, planned once), an ``IN`` list elsewhere."""
        if self._claim_sql:
            params[name] = list(ids)
            return f"event_id = ANY(:{name})"
        return f"event_id IN ({in_marks(params, name, ids)})"

    async def claim(
        self, *, lease: float, limit: int, after: Finished | None = None
    ) -> list[Claimed]:
        """Lease up to ``limit`` events (heads and the events right after them); each
        with its ``attempt``: the deliveries recorded so far, plus one.

        ``after`` (what became of the batch before) is recorded first, in the same
        transaction: one commit for both. On PostgreSQL, when every event of it was
        delivered, in the same statement."""
        params: dict[str, Any] = {
            "owner": self.owner,
            "now": self.outbox.clock(),
            "lease": lease,
            "limit": limit,
        }
        first = [] if after is None else self._outcomes(after)
        if self._claim_sql and after is not None and after.all_delivered():
            params["done"] = list(after.delivered)
            rows = await self.outbox.store.fetch_all(self._chained_sql, params)
        elif self._claim_sql and not first:
            rows = await self.outbox.store.fetch_all(self._claim_sql, params)
        elif self._claim_sql:
            async with self.outbox.store.transaction() as tx:
                await _run(tx, first)
                rows = await tx.fetch_all(self._claim_sql, params)
        else:
            async with self._transaction() as tx:
                await _run(tx, first)
                rows = await self._claim_in(tx, params)
        return [_claimed(r.as_tuple()) for r in rows]

    async def start(self, event: OutboxEvent | None, after: OutboxEvent | None) -> bool:
        """Record that ``event`` is handed over now (its attempts become
        ``event.attempt``) and, in the same statement, that ``after`` (the event
        before it, whose handler returned) is delivered; either may be None. False if
        the lease is lost."""
        params: dict[str, Any] = {"owner": self.owner, "now": self.outbox.clock()}
        sets: list[str] = []
        if event is not None:
            params.update(cur=event.event_id, attempt=event.attempt)
            sets.append("attempts = CASE WHEN event_id = :cur THEN :attempt ELSE attempts END")
        if after is not None:
            params["prev"] = after.event_id
            marks = {
                "state": "'delivered'",
                "delivered_at": ":now",
                "next_attempt_at": "NULL",
                "lease_until": "NULL",
                "owner": "NULL",  # last: MariaDB assigns left to right
            }
            sets.extend(
                f"{column} = CASE WHEN event_id = :prev THEN {value} ELSE {column} END"
                for column, value in marks.items()
            )
        ids = [f":{name}" for name in ("cur", "prev") if name in params]
        if not ids:
            return True
        changed = await self.outbox.store.execute(
            f"UPDATE {self.outbox.table} SET {', '.join(sets)} "
            f"WHERE owner = :owner AND event_id IN ({', '.join(ids)})",
            params,
        )
        return changed == len(ids)

    async def expire(self, owner: str) -> int:
        """End the leases of every event ``owner`` holds (a relay whose etcd lease ran
        out): they are claimable at once, and still count as *taken*."""
        params: dict[str, Any] = {"dead": owner, "now": self.outbox.clock()}
        return await self.outbox.store.execute(
            f"UPDATE {self.outbox.table} SET lease_until = {self._now} - 1 "
            "WHERE owner = :dead AND state = 'pending'",
            params,
        )

    async def renew(self, held: Sequence[str], *, lease: float) -> int:
        """Extend the leases of ``held``; how many were still this owner's."""
        params: dict[str, Any] = {"owner": self.owner, "lease": lease, "now": self.outbox.clock()}
        return await self.outbox.store.execute(
            f"UPDATE {self.outbox.table} SET lease_until = {self._now} + :lease "
            f"WHERE owner = :owner AND {self._ids(params, 'i', held)}",
            params,
        )

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Transaction]:
        async with self.outbox.store.connection() as conn:
            if self.outbox.backend == "mariadb":  # no gap locks while claiming
                await conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            async with conn.transaction() as tx:
                yield tx

    async def _claim_in(self, tx: Transaction, params: dict[str, Any]) -> list[Row]:
        table = self.outbox.table
        lock = " FOR UPDATE SKIP LOCKED" if self.outbox.backend == "mariadb" else ""
        head = _HEAD.format(t=table, now=self._now, done="")
        heads = await tx.fetch_all(
            f"SELECT o.event_id, o.aggregate, o.seq FROM {table} o "
            f"WHERE {head} ORDER BY o.event_id LIMIT :limit{lock}",
            params,
        )
        if not heads:
            return []
        per = -(-params["limit"] // len(heads))
        ranges: list[str] = []
        select: dict[str, Any] = {}
        for n, h in enumerate(heads):
            select.update({f"a{n}": h["aggregate"], f"s{n}": h["seq"], f"e{n}": h["seq"] + per})
            ranges.append(f"(aggregate = :a{n} AND seq >= :s{n} AND seq < :e{n})")
        rows = await tx.fetch_all(
            f"SELECT {EVENT_COLUMNS}, CASE WHEN owner IS NULL THEN 0 ELSE 1 END AS taken "
            f"FROM {table} WHERE state = 'pending' AND ({' OR '.join(ranges)})",
            select,
        )
        start = {str(h["aggregate"]): (n, int(h["seq"])) for n, h in enumerate(heads)}

        def nearest(row: Row) -> tuple[int, int]:
            order, first = start[str(row["aggregate"])]
            return int(row["seq"]) - first, order

        chosen = sorted(rows, key=nearest)[: params["limit"]]
        lease = {name: params[name] for name in ("owner", "lease", "now")}
        ids = [str(r["event_id"]) for r in chosen]
        await tx.execute(
            f"UPDATE {table} SET owner = :owner, lease_until = {self._now} + :lease "
            f"WHERE event_id IN ({in_marks(lease, 'i', ids)})",
            lease,
        )
        return chosen

    async def finish(self, finished: Finished) -> None:
        """Mark the delivered events (one more attempt each, except those
        ``started``, whose attempt :meth:`start` recorded), record failures, give the
        rest of the batch back: every write fenced on this relay's lease."""
        statements = self._outcomes(finished)
        if len(statements) == 1:
            await self.outbox.store.execute(*statements[0])
        elif statements:
            async with self.outbox.store.transaction() as tx:
                await _run(tx, statements)

    def _outcomes(self, finished: Finished) -> list[Statement]:
        """The statements of :meth:`finish`."""
        held, delivered, outcomes = finished.held, finished.delivered, finished.outcomes
        started = finished.started
        done = {*delivered, *started, *(o.event_id for o in outcomes)}
        release = [i for i in held if i not in done]
        table = self.outbox.table
        now = self.outbox.clock()
        statements: list[Statement] = []
        for ids, counted, more in ((delivered, "d", " + 1"), (started, "s", "")):
            if not ids:
                continue
            params: dict[str, Any] = {"owner": self.owner, "now": now}
            if self._claim_sql:
                params[counted] = list(ids)
                statements.append((_delivered_sql(table, counted, more), params))
                continue
            statements.append(
                (
                    f"UPDATE {table} SET state = 'delivered', delivered_at = :now, owner = NULL, "
                    f"lease_until = NULL, next_attempt_at = NULL, attempts = attempts{more} "
                    f"WHERE owner = :owner AND {self._ids(params, counted, ids)}",
                    params,
                )
            )
        for o in outcomes:
            statements.append(
                (
                    f"UPDATE {table} SET state = :state, attempts = :attempts, "
                    f"last_error = :error, next_attempt_at = {self._now} + :retry_in, "
                    "owner = NULL, lease_until = NULL "
                    "WHERE owner = :owner AND event_id = :event_id",
                    {
                        "state": "pending" if o.retry_in is not None else "parked",
                        "attempts": o.attempts,
                        "error": o.error,
                        "retry_in": o.retry_in,
                        "now": now,
                        "owner": self.owner,
                        "event_id": o.event_id,
                    },
                )
            )
        if release:
            params = {"owner": self.owner}
            statements.append(
                (
                    f"UPDATE {table} SET owner = NULL, lease_until = NULL "
                    f"WHERE owner = :owner AND {self._ids(params, 'r', release)}",
                    params,
                )
            )
        return statements


async def _run(tx: Transaction, statements: Sequence[Statement]) -> None:
    for sql, params in statements:
        await tx.execute(sql, params)


def by_aggregate(events: list[OutboxEvent]) -> list[list[OutboxEvent]]:
    """Events by aggregate, each aggregate's in order and contiguous from its head;
    aggregates in the order of their heads' ids (oldest first)."""
    runs: dict[str, list[OutboxEvent]] = {}
    for event in sorted(events, key=lambda e: (e.aggregate, e.seq)):
        run = runs.setdefault(event.aggregate, [])
        if not run or event.seq == run[-1].seq + 1:
            run.append(event)
    return sorted(runs.values(), key=lambda run: run[0].event_id)
