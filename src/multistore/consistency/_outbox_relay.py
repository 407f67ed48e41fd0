"""The outbox relay: deliver events at least once, in order per aggregate.

An aggregate is delivered by one relay at a time. A relay **claims** a batch: the
*head* of each aggregate it takes (its lowest event not yet delivered, if that one is
pending, due and not leased by a live relay) and the pending events right after it,
all leased to the relay (``owner``, ``lease_until``). Another relay cannot take the
aggregate while its head is leased, and cannot take a later event because it is not
a head. A heartbeat renews the leases while the batch runs; a relay that dies stops
renewing, and after ``lease`` seconds any relay takes its events over.

On PostgreSQL a claim is one statement (the heads selected ``FOR UPDATE SKIP
LOCKED``, the lease written by an ``UPDATE … RETURNING``); on MariaDB it is a short
``READ COMMITTED`` transaction with ``FOR UPDATE SKIP LOCKED``; on SQLite a ``BEGIN
IMMEDIATE`` transaction (SQLite's write lock serialises claimers).

Events are handed to the handler in order; the first failure of an aggregate ends
that aggregate's part of the batch (the events after it are released, not handed),
and the failed event is due again after the retry policy's backoff — or is
**parked** once the policy gives up, which blocks its aggregate until
:meth:`Outbox.retry_parked`. At the end of the batch the delivered events are marked
in one statement, fenced on the relay's lease. :meth:`OutboxRelay.drain` and
:meth:`OutboxRelay.run` write a batch's outcomes in one transaction with the next
claim (on PostgreSQL, when the whole batch was delivered, in the claim's statement):
one commit per batch.

A run that stops inside the handler (cancelled) records the interrupted attempt on
the event it was handling. A run that dies leaves no record of where it was: the next
claim sees its events as *taken*, and delivers those aggregates carefully — before
each event is handed over, one statement records its attempt and marks the event
before it delivered — so that an event that kills the relay every time is charged
with each attempt and parked after the policy's attempts, and the events before it
are not handed over again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random as _random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from multistore._aio import RECANCEL_EVERY, stop_task
from multistore.consistency._etcd_leases import EtcdLeases, WorkerLease, lease_group
from multistore.consistency._outbox import Outbox, OutboxEvent
from multistore.consistency._outbox_claims import (
    Claimed,
    Finished,
    Leases,
    Outcome,
    by_aggregate,
)
from multistore.consistency._retry import RetryPolicy
from multistore.consistency._saga import ErrorInfo
from multistore.errors import (
    ConflictError,
    IdempotencyInProgressError,
    MultistoreError,
    StoreError,
    UsageError,
)

__all__ = ["OUTBOX_RETRY", "OutboxRelay", "RelayStatistics"]

Handler = Callable[[OutboxEvent], Awaitable[object]]

OUTBOX_RETRY: Final = RetryPolicy(
    max_attempts=10, initial_delay=0.5, multiplier=2.0, max_delay=60.0, retry_on=(Exception,)
)
"""Handlers: retried on any error, 0.5 s doubling to 60 s, 10 attempts; then parked."""


@dataclass(frozen=True)
class RelayStatistics:
    """What a relay did since it was made."""

    batches: int = 0
    delivered: int = 0
    failed: int = 0
    """Handler failures that were scheduled for another attempt."""
    parked: int = 0
    lease_lost: int = 0
    """Batches cut short because another relay took the leases over."""
    store_errors: int = 0
    """Rounds of :meth:`OutboxRelay.run` that failed on the store (and were retried)."""
    last_error: ErrorInfo | None = None


class OutboxRelay:
    """Delivers an outbox's events to ``handler`` (``async def handler(event)``).

    ``batch`` events at most per claim; ``lease`` seconds of ownership, renewed every
    ``lease / 3`` while a batch runs; ``retry`` decides how often a failing event is
    tried again and how long to wait in between (the wait is kept in the table, so
    it holds across restarts); ``worker_id`` names this relay in the leases — a relay
    restarted with the same id takes its own leases back at once, so never run two
    live relays with one id. ``poll_interval`` doubles up to ``max_poll_interval``
    while :meth:`run` finds nothing to do.

    ``leases``: hold an etcd lease too (see :class:`EtcdLeases`). The relay's claims
    then last only as long as that lease: another relay expires and takes them over
    as soon as etcd lets the lease go, however long ``lease`` is, and this relay hands
    no event over once its etcd lease has run out (it takes a new one, under a new
    owner name, before it claims again). :meth:`close` gives the etcd lease up.
    """

    def __init__(
        self,
        outbox: Outbox,
        handler: Handler,
        *,
        batch: int = 100,
        lease: float = 30.0,
        worker_id: str | None = None,
        retry: RetryPolicy = OUTBOX_RETRY,
        poll_interval: float = 0.05,
        max_poll_interval: float = 1.0,
        random: Callable[[], float] = _random.random,
        leases: EtcdLeases | None = None,
    ) -> None:
        if batch < 1 or not lease > 0:
            raise UsageError("an outbox relay needs batch >= 1 and a positive lease")
        if not 0 < poll_interval <= max_poll_interval:
            raise UsageError("poll intervals must be positive, the first not above the maximum")
        self.outbox = outbox
        self.handler = handler
        self.batch = batch
        self.lease = lease
        self.worker_id = worker_id or f"relay-{uuid.uuid4().hex[:12]}"
        self.retry = retry
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self._random = random
        self._stats = RelayStatistics()
        self._lock = asyncio.Lock()
        self._leases = Leases(outbox, self.worker_id)
        self._claimed = 0
        self.etcd = (
            None
            if leases is None
            else WorkerLease(
                leases,
                lease_group("outbox", outbox.store.url, outbox.table),
                self.worker_id,
                self._expire,
            )
        )

    @property
    def owner(self) -> str:
        """The name this relay's claims carry: ``worker_id``, or with ``leases`` the
        worker id and the etcd lease of the current term."""
        return self._leases.owner

    async def close(self) -> None:
        """Give the etcd lease up (with ``leases``; nothing to do otherwise)."""
        if self.etcd is not None:
            await self.etcd.close()

    def _valid(self) -> bool:
        """This relay may hand events over: no etcd lease is asked for, or it lives."""
        return self.etcd is None or self.etcd.valid()

    async def _expire(self, owner: str) -> None:
        await self._leases.expire(owner)

    async def _take_term(self) -> None:
        """With ``leases``: a live etcd lease (a new one, a new owner, if the last ran
        out) and the claims of relays whose lease etcd let go expired."""
        if self.etcd is not None and await self.etcd.ensure():
            self._leases = Leases(self.outbox, self.etcd.owner)

    def statistics(self) -> RelayStatistics:
        return self._stats

    def _count(self, **more: Any) -> None:
        stats = self._stats
        changes = {name: getattr(stats, name) + n for name, n in more.items() if name != "error"}
        if "error" in more:
            changes["last_error"] = more["error"]
        self._stats = dataclasses.replace(stats, **changes)

    # -- the loop -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set: batch after batch while there is work (as
        :meth:`drain` does), else poll with a backoff from ``poll_interval`` to
        ``max_poll_interval``. A store that fails, times out or reports a deadlock
        ends a round, not the loop (it is counted in :meth:`statistics`); other errors
        are raised."""
        wait = self.poll_interval
        try:
            while not stop.is_set():
                try:
                    delivered = await self._drain(stop)
                except (StoreError, ConflictError) as exc:  # down, timed out, deadlocked
                    self._count(store_errors=1, error=ErrorInfo.of(exc))
                    delivered = self._claimed = 0
                if delivered or self._claimed >= self.batch:
                    wait = self.poll_interval
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
                wait = min(wait * 2, self.max_poll_interval)
        finally:
            await self.close()

    async def run_once(self) -> int:
        """Claim one batch, hand its events to the handler, record the outcomes;
        the number of events delivered (the handler returned)."""
        async with self._lock:
            claimed = await self._claim()
            if not claimed:
                return 0
            batch, lost = await self._run_batch(claimed)
            await batch.finish(self._leases)
            return self._counted(batch, lost)

    async def drain(self) -> int:
        """Deliver batch after batch until a claim finds nothing (or the leases were
        lost); the number of events delivered. Each batch's outcomes are written in
        one transaction with the next claim: one commit per batch, not two."""
        return await self._drain(None)

    async def _drain(self, stop: asyncio.Event | None) -> int:
        total = 0
        async with self._lock:
            claimed = await self._claim()
            while claimed:
                batch, lost = await self._run_batch(claimed)
                if lost.is_set() or (stop is not None and stop.is_set()):
                    await batch.finish(self._leases)
                    return total + self._counted(batch, lost)
                claimed = await self._claim(batch)
                total += self._counted(batch, lost)
        return total

    async def _claim(self, before: _Batch | None = None) -> list[Claimed]:
        """The next batch; the outcomes of ``before`` written in the same transaction."""
        if before is not None and not self._valid():
            # The etcd lease ran out: record what the batch did under its owner (the
            # database fences it), then claim as a new owner.
            with contextlib.suppress(MultistoreError):
                await before.finish(self._leases)
            before = None
        await self._take_term()
        after = None if before is None else before.finished()
        claimed = await self._leases.claim(lease=self.lease, limit=self.batch, after=after)
        self._claimed = len(claimed)
        return claimed

    async def _run_batch(self, claimed: list[Claimed]) -> tuple[_Batch, asyncio.Event]:
        """Deliver a claimed batch under a heartbeat; its outcomes are left to write
        (if the delivery is cut off, they are written here, then the error raised)."""
        batch = _Batch(claimed)
        lost = asyncio.Event()
        beat = asyncio.get_running_loop().create_task(self._heartbeat(batch.held, lost))
        try:
            await self._deliver(batch, lost)
        except BaseException:
            await self._stop(beat)
            if batch.current is not None:  # cut off inside the handler
                batch.outcomes.append(self._cut_off(batch.current))
            with contextlib.suppress(MultistoreError):  # the leases run out instead
                await batch.finish(self._leases)
            raise
        await self._stop(beat)
        return batch, lost

    def _counted(self, batch: _Batch, lost: asyncio.Event) -> int:
        """Add a finished batch to the statistics; the number it delivered."""
        outcomes = batch.outcomes
        parked = sum(1 for o in outcomes if o.retry_in is None)
        self._count(
            batches=1,
            delivered=batch.returned,
            failed=len(outcomes) - parked,
            parked=parked,
            lease_lost=1 if lost.is_set() else 0,
        )
        return batch.returned

    async def _deliver(self, batch: _Batch, lost: asyncio.Event) -> None:
        """Hand each aggregate's events over in order; an aggregate stops at its first
        failure, the batch when the leases were lost. An aggregate with events that
        another run left taken is handed over one recorded event at a time."""
        for group in batch.groups:
            careful = any(batch.taken[e.event_id] for e in group)
            before: OutboxEvent | None = None
            for event in group:
                if lost.is_set():
                    return
                if not self._valid():  # the etcd lease ran out (paused, cut off)
                    lost.set()
                    return
                if event.attempt > self.retry.max_attempts:
                    batch.outcomes.append(self._interrupted(event))
                    break
                if careful and not await self._start(batch, event, before, lost):
                    return
                batch.current = event
                try:
                    await self.handler(event)
                except Exception as exc:
                    batch.current = None
                    if careful:
                        batch.started.remove(event.event_id)
                    batch.outcomes.append(self._failed(event, exc))
                    break
                batch.current = None
                batch.returned += 1
                if careful:
                    before = event
                else:
                    batch.delivered.append(event.event_id)
            if before is not None and not await self._start(batch, None, before, lost):
                return

    async def _start(
        self,
        batch: _Batch,
        event: OutboxEvent | None,
        before: OutboxEvent | None,
        lost: asyncio.Event,
    ) -> bool:
        """Careful delivery: record ``event``'s attempt and mark ``before`` delivered,
        in one statement; False (and ``lost`` set) if the leases were lost."""
        if not await self._leases.start(event, before):
            lost.set()
            return False
        if before is not None:
            batch.held.discard(before.event_id)
            batch.started.remove(before.event_id)
        if event is not None:
            batch.started.append(event.event_id)
        return True

    async def _stop(self, beat: asyncio.Task[None]) -> None:
        # Cancelled again until it ends (a cancel can be lost), within a bound.
        await stop_task(beat, max(self.lease, 4 * RECANCEL_EVERY))

    def _failed(self, event: OutboxEvent, exc: Exception) -> Outcome:
        error = ErrorInfo.of(exc).to_json()
        if not self.retry.should_retry(exc, event.attempt):
            return Outcome(event.event_id, event.attempt, error, None)
        delay = self.retry.delay(event.attempt, self._random())
        if isinstance(exc, IdempotencyInProgressError):  # an inbox still held by a dead run
            delay = max(delay, exc.retry_after)
        return Outcome(event.event_id, event.attempt, error, delay)

    def _interrupted(self, event: OutboxEvent) -> Outcome:
        """An event whose recorded attempts used up the policy, the last one cut off
        (the relay died or was cancelled while the handler ran). Park it."""
        message = (
            f"its delivery was cut off (the relay stopped while the handler ran) after "
            f"{event.attempt - 1} recorded attempts; parked so that it cannot stop the "
            "relay again"
        )
        error = ErrorInfo("DeliveryInterrupted", message).to_json()
        return Outcome(event.event_id, event.attempt - 1, error, None)

    def _cut_off(self, event: OutboxEvent) -> Outcome:
        """The relay was cancelled while the handler ran ``event``: count the attempt,
        due again at once."""
        message = "the relay was stopped while the handler ran"
        error = ErrorInfo("DeliveryInterrupted", message).to_json()
        return Outcome(event.event_id, event.attempt, error, 0.0)

    async def _heartbeat(self, held: set[str], lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            if not self._valid():  # renew nothing once the etcd lease ran out
                lost.set()
                return
            ids = sorted(held)
            with contextlib.suppress(MultistoreError):  # a hiccup: the lease still runs
                if await self._leases.renew(ids, lease=self.lease) < len(ids):
                    lost.set()  # another relay took some over: hand out nothing more


class _Batch:
    """One claim and what became of its events."""

    def __init__(self, claimed: list[Claimed]) -> None:
        events = [c.event for c in claimed]
        self.groups = by_aggregate(events)
        self.taken = {c.event.event_id: c.taken for c in claimed}
        self.held = {e.event_id for e in events}
        """Events still leased to this relay (a careful delivery gives them up early)."""
        self.delivered: list[str] = []
        """Handled; their attempt is counted when they are marked delivered."""
        self.started: list[str] = []
        """Handled (or being handled) with their attempt recorded before, not marked yet."""
        self.outcomes: list[Outcome] = []
        self.current: OutboxEvent | None = None
        """The event in the handler right now."""
        self.returned = 0
        """How many times the handler returned."""

    def finished(self) -> Finished:
        started = [i for i in self.started if self.current is None or i != self.current.event_id]
        return Finished(self.held, self.delivered, self.outcomes, started)

    async def finish(self, leases: Leases) -> None:
        await leases.finish(self.finished())
