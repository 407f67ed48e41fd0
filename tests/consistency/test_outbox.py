"""The transactional outbox, its relay and the inbox, on SQLite, PostgreSQL and MariaDB.

Atomicity with the business write, numbering per aggregate under concurrent writers,
order per aggregate while another aggregate fails, retries then parking, several
relays on one outbox (no aggregate handled by two at once), lease renewal, purge, and
crash recovery with real processes (``tests/consistency/outbox_worker.py`` SIGKILLs
itself at a chosen point). Each test runs one ``asyncio.run`` with its own stores.
Time-dependent parts (retry times, leases) run on a fake clock the test advances.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from multistore.consistency import (
    Idempotency,
    Inbox,
    Outbox,
    OutboxEvent,
    OutboxRelay,
    RetryPolicy,
    deduplicated,
)
from multistore.consistency._outbox import new_event_id
from multistore.errors import InvalidValueError, UsageError
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore
from tests.consistency.helpers import wait_for as poll

ROOT = Path(__file__).resolve().parents[2]
FAST_RETRY = RetryPolicy(
    max_attempts=5, initial_delay=10.0, max_delay=1000.0, jitter=0.0, retry_on=(Exception,)
)


class Clock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def url(relational_url: str) -> str:
    return relational_url


@contextlib.asynccontextmanager
async def shop(
    url: str, clock: Callable[[], float] = time.time
) -> AsyncIterator[tuple[RelationalStore, Outbox]]:
    """The store with a ``products`` table and a ready outbox."""
    store = await open_store(url, model="relational")
    assert isinstance(store, RelationalStore)
    try:
        await store.execute(
            "CREATE TABLE IF NOT EXISTS products (id VARCHAR(50) PRIMARY KEY, name VARCHAR(100))"
        )
        outbox = Outbox(store, clock=clock)
        await outbox.setup()
        yield store, outbox
    finally:
        await store.close()


async def save(store: RelationalStore, outbox: Outbox, aggregate: str, n: int) -> OutboxEvent:
    """A business write and its event in one transaction."""
    async with store.transaction() as tx:
        await tx.execute(
            "INSERT INTO products (id, name) VALUES (:id, :name)",
            {"id": f"{aggregate}-{n}", "name": f"product {n}"},
        )
        return await outbox.add(tx, aggregate, "product.upserted", {"id": f"{aggregate}-{n}"})


def in_order_per_aggregate(calls: list[tuple[str, int, bool]]) -> bool:
    """Each handler call (aggregate, seq, succeeded) is for the event right after the
    last one of its aggregate that succeeded."""
    done: dict[str, int] = {}
    for aggregate, seq, ok in calls:
        if seq != done.get(aggregate, 0) + 1:
            return False
        if ok:
            done[aggregate] = seq
    return True


# -- writing -----------------------------------------------------------------------------


def test_event_ids_are_uuid7_and_strictly_increasing_within_a_process() -> None:
    """Many ids per millisecond still sort in the order they were made (the oldest-
    first listing and the inbox's keys rely on it)."""
    ids = [new_event_id() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {uuid.UUID(i).version for i in ids} == {7}
    millis = {int(uuid.UUID(i).hex[:12], 16) for i in ids}
    assert len(millis) < len(ids)  # several ids shared a millisecond, still in order


def test_event_commits_with_the_business_write_or_not_at_all(url: str) -> None:
    async def body() -> None:
        async with shop(url) as (store, outbox):
            first = await save(store, outbox, "p", 1)
            assert (first.aggregate, first.seq, first.event_type) == ("p", 1, "product.upserted")

            class Abort(Exception):
                """A business error that rolls the transaction back."""

            with pytest.raises(Abort):
                async with store.transaction() as tx:
                    await tx.execute("INSERT INTO products (id, name) VALUES ('p-2', 'two')")
                    await outbox.add(tx, "p", "product.upserted", {"id": "p-2"})
                    raise Abort
            assert await store.fetch_val("SELECT COUNT(*) FROM products") == 1
            events = await outbox.events()
            assert [(r.event.event_id, r.event.seq, r.state) for r in events] == [
                (first.event_id, 1, "pending")
            ]
            assert events[0].event.payload == {"id": "p-1"}
            # the rolled-back number is used again: no gap
            third = await save(store, outbox, "p", 3)
            assert third.seq == 2
            assert await outbox.counts() == {"pending": 2, "delivered": 0, "parked": 0}

    asyncio.run(body())


def test_concurrent_writers_of_one_aggregate_get_every_number_once(url: str) -> None:
    async def body() -> None:
        async with shop(url) as (store, outbox):

            async def writer(w: int) -> None:
                for i in range(6):
                    with contextlib.suppress(RuntimeError):
                        async with store.transaction() as tx:
                            await outbox.add(tx, f"new-{i}", "t", {"w": w})  # created by the race
                            await outbox.add(tx, "hot", "t", {"w": w, "i": i})
                            if (w + i) % 4 == 0:
                                raise RuntimeError("roll back")

            await asyncio.gather(*(writer(w) for w in range(5)))
            rows = await store.fetch_all(
                "SELECT aggregate, seq, event_id FROM multistore_outbox ORDER BY aggregate, seq"
            )
            numbers: dict[str, list[int]] = {}
            for r in rows:
                numbers.setdefault(r["aggregate"], []).append(int(r["seq"]))
            committed = sum(1 for w in range(5) for i in range(6) if (w + i) % 4)
            assert len(numbers["hot"]) == committed
            assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in numbers.values())
            assert len({r["event_id"] for r in rows}) == len(rows)

    asyncio.run(body())


def test_bad_input_is_refused_and_nothing_is_written(url: str) -> None:
    async def body() -> None:
        async with shop(url) as (store, outbox):
            bad: list[tuple[Any, Any, Any]] = [
                ("p", "t", {"when": object()}),  # not JSON
                ("p", "t", {"price": math.nan}),
                ("", "t", {}),  # empty aggregate
                ("x" * 256, "t", {}),
                ("p", "", {}),
                ("p", 7, {}),
                (None, "t", {}),
            ]
            for aggregate, event_type, payload in bad:
                with pytest.raises(InvalidValueError, match="outbox event's"):
                    async with store.transaction() as tx:
                        await tx.execute("INSERT INTO products (id, name) VALUES ('p-1', 'one')")
                        await outbox.add(tx, aggregate, event_type, payload)
            with pytest.raises(UsageError, match="open transaction"):
                await outbox.add(store, "p", "t", {})  # type: ignore[arg-type]
            async with store.transaction() as done:
                pass  # a transaction that ended (committed, empty)
            with pytest.raises(UsageError, match="open transaction"):
                await outbox.add(done, "p", "t", {})
            assert await store.fetch_val("SELECT COUNT(*) FROM products") == 0
            assert await outbox.counts() == {"pending": 0, "delivered": 0, "parked": 0}
            with pytest.raises(UsageError, match="table names"):
                Outbox(store, table="Outbox; DROP")

    asyncio.run(body())


# -- delivering --------------------------------------------------------------------------


def test_failing_aggregate_waits_in_order_while_others_flow(url: str) -> None:
    async def body() -> None:
        clock = Clock()
        async with shop(url, clock) as (store, outbox):
            for n in range(1, 5):
                for aggregate in ("a", "b", "c"):
                    await save(store, outbox, aggregate, n)
            calls: list[tuple[str, int, bool]] = []
            down = {"b"}

            async def handler(event: OutboxEvent) -> None:
                ok = event.aggregate not in down
                calls.append((event.aggregate, event.seq, ok))
                if not ok:
                    raise ConnectionRefusedError(f"index for {event.aggregate} is down")

            relay = OutboxRelay(outbox, handler, retry=FAST_RETRY)
            assert await relay.run_once() == 8  # a and c flow, b stops at its first event
            assert [c for c in calls if c[0] == "b"] == [("b", 1, False)]
            assert await relay.run_once() == 0  # b's retry is not due yet
            assert len(calls) == 9
            clock.advance(10.0)
            assert await relay.run_once() == 0  # retried, still down
            assert [c for c in calls if c[0] == "b"] == [("b", 1, False)] * 2
            (record,) = await outbox.events(aggregate="b", state="pending", limit=1)
            assert (record.event.seq, record.attempts) == (1, 2)
            assert record.error is not None and record.error.type == "ConnectionRefusedError"
            assert record.next_attempt_at == clock.now + 20.0  # 10 s doubled
            down.clear()
            clock.advance(20.0)
            assert await relay.run_once() == 4
            assert in_order_per_aggregate(calls)
            assert [c[1] for c in calls if c[0] == "b" and c[2]] == [1, 2, 3, 4]
            assert await outbox.counts() == {"pending": 0, "delivered": 12, "parked": 0}
            stats = relay.statistics()
            assert (stats.delivered, stats.failed, stats.parked) == (12, 2, 0)

    asyncio.run(body())


def test_exhausted_retries_park_the_event_and_block_its_aggregate(url: str) -> None:
    async def body() -> None:
        clock = Clock()
        async with shop(url, clock) as (store, outbox):
            for n in range(1, 4):
                await save(store, outbox, "p", n)
                await save(store, outbox, "q", n)
            calls: list[tuple[str, int, bool]] = []
            broken = True

            async def handler(event: OutboxEvent) -> None:
                ok = not (broken and event.aggregate == "p")
                calls.append((event.aggregate, event.seq, ok))
                if not ok:
                    raise ValueError(f"cannot index {event.payload['id']}")

            policy = RetryPolicy(
                max_attempts=3, initial_delay=1.0, jitter=0.0, retry_on=(Exception,)
            )
            relay = OutboxRelay(outbox, handler, retry=policy)
            for _ in range(6):
                await relay.run_once()
                clock.advance(100.0)
            assert [c for c in calls if c[0] == "p"] == [("p", 1, False)] * 3
            assert [c[1] for c in calls if c[0] == "q"] == [1, 2, 3]
            (parked,) = await outbox.parked()
            assert (parked.event.aggregate, parked.event.seq, parked.attempts) == ("p", 1, 3)
            assert parked.state == "parked" and parked.owner is None
            assert parked.error is not None
            assert (parked.error.type, parked.error.message) == ("ValueError", "cannot index p-1")
            assert await outbox.counts() == {"pending": 2, "delivered": 3, "parked": 1}
            assert relay.statistics().parked == 1

            broken = False
            assert await outbox.retry_parked(aggregate="q") == 0
            assert await outbox.retry_parked(aggregate="p") == 1
            assert await relay.run_once() == 3
            assert [c[1] for c in calls if c[0] == "p" and c[2]] == [1, 2, 3]
            assert in_order_per_aggregate(calls)
            assert await outbox.parked() == []

            # an error the policy does not retry parks at once
            await save(store, outbox, "r", 1)
            only_timeouts = RetryPolicy(max_attempts=5, retry_on=(TimeoutError,))

            async def refuse(event: OutboxEvent) -> None:
                raise KeyError(event.aggregate)

            assert await OutboxRelay(outbox, refuse, retry=only_timeouts).run_once() == 0
            (parked,) = await outbox.parked()
            assert (parked.event.aggregate, parked.attempts) == ("r", 1)

    asyncio.run(body())


def test_a_delivery_cut_off_every_time_is_parked(url: str) -> None:
    """A handler that never ends its delivery (here: the relay is cancelled inside it,
    as a crash would cut it) is parked after the policy's attempts, without being
    handed over again, so that it cannot stop the relay for ever."""

    async def body() -> None:
        async with shop(url) as (store, outbox):
            await save(store, outbox, "p", 1)
            await save(store, outbox, "p", 2)
            started: list[int] = []
            entered = asyncio.Event()

            async def hangs(event: OutboxEvent) -> None:
                started.append(event.attempt)
                entered.set()
                await asyncio.Event().wait()

            policy = RetryPolicy(max_attempts=3, retry_on=(Exception,))
            relay = OutboxRelay(outbox, hangs, retry=policy)
            for _ in range(3):
                entered.clear()
                task = asyncio.create_task(relay.run_once())
                await asyncio.wait_for(entered.wait(), 30)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert started == [1, 2, 3]
            assert await relay.run_once() == 0
            assert started == [1, 2, 3]
            (parked,) = await outbox.parked()
            assert (parked.event.seq, parked.attempts, parked.owner) == (1, 3, None)
            assert parked.error is not None and parked.error.type == "DeliveryInterrupted"
            (waiting,) = await outbox.events(state="pending")
            assert (waiting.event.seq, waiting.owner) == (2, None)

    asyncio.run(body())


def test_a_cancelled_delivery_is_charged_to_the_event_in_the_handler(url: str) -> None:
    """Cancelled while the handler runs event 2 of a batch: event 1 is delivered,
    event 2 carries the interrupted attempt (not the claim's head), event 3 is
    released untouched."""

    async def body() -> None:
        async with shop(url) as (store, outbox):
            for n in (1, 2, 3):
                await save(store, outbox, "p", n)
            entered = asyncio.Event()

            async def hangs_on_2(event: OutboxEvent) -> None:
                if event.seq == 2:
                    entered.set()
                    await asyncio.Event().wait()

            relay = OutboxRelay(outbox, hangs_on_2)
            task = asyncio.create_task(relay.run_once())
            await asyncio.wait_for(entered.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            rows = await outbox.events(aggregate="p")
            assert [(r.event.seq, r.state, r.attempts, r.owner) for r in rows] == [
                (1, "delivered", 1, None),
                (2, "pending", 1, None),
                (3, "pending", 0, None),
            ]
            assert rows[1].error is not None and rows[1].error.type == "DeliveryInterrupted"

    asyncio.run(body())


@pytest.mark.server
def test_run_rides_out_a_lost_database(
    postgres_server: Any, postgres_url: str, tcp_proxy: Callable[[str, int], Any]
) -> None:
    proxy = tcp_proxy("127.0.0.1", postgres_server.port)
    through = postgres_url.replace(f":{postgres_server.port}/", f":{proxy.port}/")
    through += "?connect_timeout=0.5&timeout=2"

    async def body() -> None:
        async with shop(postgres_url) as (store, outbox):
            relay_store = await open_store(through, model="relational")
            assert isinstance(relay_store, RelationalStore)
            seen: list[int] = []

            async def handler(event: OutboxEvent) -> None:
                seen.append(event.seq)

            relay = OutboxRelay(
                Outbox(relay_store), handler, poll_interval=0.01, max_poll_interval=0.05
            )
            stop = asyncio.Event()
            task = asyncio.create_task(relay.run(stop))
            try:
                await save(store, outbox, "p", 1)

                async def delivered(n: int) -> bool:
                    return len(seen) == n

                async def marked() -> bool:  # not only handed over: recorded as delivered
                    return (await outbox.counts())["delivered"] == 1

                await poll(marked, "the first event delivered")
                proxy.cut()
                await save(store, outbox, "p", 2)

                async def failed() -> bool:
                    return relay.statistics().store_errors > 0

                await poll(failed, "the relay met the lost connection")
                assert not task.done()
                proxy.restore()
                await poll(lambda: delivered(2), "the relay delivered after the outage")
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
                await relay_store.close()
            assert seen == [1, 2]
            last = relay.statistics().last_error
            assert last is not None and last.type.startswith("Store")

    asyncio.run(body())


def test_two_relays_share_the_work_without_sharing_an_aggregate(url: str) -> None:
    aggregates, per_aggregate = 24, 8

    async def body() -> None:
        async with shop(url) as (store, outbox):
            for a in range(aggregates):  # oldest first: each aggregate's events together
                for n in range(1, per_aggregate + 1):
                    await save(store, outbox, f"agg{a}", n)
            other = await open_store(url, model="relational")
            assert isinstance(other, RelationalStore)
            active: dict[str, str] = {}
            overlaps: list[tuple[str, str, str]] = []
            calls: list[tuple[str, int, bool]] = []

            def handler_for(relay_name: str) -> Callable[[OutboxEvent], Awaitable[None]]:
                async def handler(event: OutboxEvent) -> None:
                    holder = active.get(event.aggregate)
                    if holder is not None:
                        overlaps.append((event.aggregate, holder, relay_name))
                    active[event.aggregate] = relay_name
                    calls.append((event.aggregate, event.seq, True))
                    await asyncio.sleep(0.002)  # the work of indexing, while the other runs
                    active.pop(event.aggregate, None)

                return handler

            try:
                relays = [
                    OutboxRelay(outbox, handler_for("one"), batch=3, worker_id="one"),
                    OutboxRelay(Outbox(other), handler_for("two"), batch=3, worker_id="two"),
                ]
                stop = asyncio.Event()
                tasks = [asyncio.create_task(r.run(stop)) for r in relays]

                async def drained() -> bool:
                    return (await outbox.counts())["delivered"] == aggregates * per_aggregate

                await poll(drained, "every event delivered")
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 30)
            finally:
                await other.close()
            assert overlaps == []
            assert len(calls) == aggregates * per_aggregate  # each event handed over once
            assert in_order_per_aggregate(calls)
            assert all(r.statistics().delivered > 0 for r in relays)
            assert sum(r.statistics().delivered for r in relays) == len(calls)

    asyncio.run(body())


def test_heartbeat_keeps_a_slow_batch_from_being_taken_over(url: str) -> None:
    async def body() -> None:
        clock = Clock()
        async with shop(url, clock) as (store, outbox):
            await save(store, outbox, "slow", 1)
            entered, release = asyncio.Event(), asyncio.Event()
            second_calls: list[OutboxEvent] = []

            async def slow(event: OutboxEvent) -> None:
                entered.set()
                await release.wait()

            async def second_handler(event: OutboxEvent) -> None:
                second_calls.append(event)

            first = OutboxRelay(outbox, slow, lease=0.3, worker_id="first")
            second = OutboxRelay(outbox, second_handler, lease=0.3, worker_id="second")
            running = asyncio.create_task(first.run_once())
            await asyncio.wait_for(entered.wait(), 30)
            for _ in range(4):  # 4 x 0.2 s of fake time: well past the first lease
                (before,) = await outbox.events()
                assert before.lease_until is not None
                clock.advance(0.2)

                async def renewed(old: float = before.lease_until) -> bool:
                    (now,) = await outbox.events()
                    return now.lease_until is not None and now.lease_until > old

                await poll(renewed, "the first relay renewed its lease")
                assert await second.run_once() == 0
            assert second_calls == []
            release.set()
            assert await asyncio.wait_for(running, 30) == 1
            (done,) = await outbox.events()
            assert (done.state, done.owner, done.attempts) == ("delivered", None, 1)

    asyncio.run(body())


def test_purge_drops_old_delivered_events_and_numbering_goes_on(url: str) -> None:
    async def body() -> None:
        clock = Clock()
        async with shop(url, clock) as (store, outbox):
            for n in range(1, 4):
                await save(store, outbox, "p", n)

            async def ok(event: OutboxEvent) -> None:
                """Every event is handled at once."""

            assert await OutboxRelay(outbox, ok).run_once() == 3
            await save(store, outbox, "q", 1)  # pending: never purged
            clock.advance(100.0)
            assert await outbox.purge(older_than=1000.0) == 0
            assert await outbox.purge(older_than=50.0) == 3
            assert [(r.event.aggregate, r.state) for r in await outbox.events()] == [
                ("q", "pending")
            ]
            assert (await save(store, outbox, "p", 4)).seq == 4
            with pytest.raises(InvalidValueError):
                await outbox.purge(older_than=-1.0)

    asyncio.run(body())


def test_run_delivers_what_arrives_until_stopped(tmp_path: Path) -> None:
    async def body() -> None:
        async with shop(f"sqlite:///{tmp_path / 'run.db'}") as (store, outbox):
            seen: list[int] = []

            async def handler(event: OutboxEvent) -> None:
                seen.append(event.seq)

            relay = OutboxRelay(outbox, handler, poll_interval=0.01, max_poll_interval=0.05)
            stop = asyncio.Event()
            task = asyncio.create_task(relay.run(stop))
            for n in range(1, 6):
                await save(store, outbox, "p", n)

            async def all_seen() -> bool:
                return len(seen) == 5

            await poll(all_seen, "the running relay delivered every event")
            stop.set()
            await asyncio.wait_for(task, 30)
            assert seen == [1, 2, 3, 4, 5]

    asyncio.run(body())


def test_drain_records_each_batch_with_the_next_claim(url: str) -> None:
    """drain() goes batch after batch, writing each batch's outcomes together with the
    next claim: every event handed over once and in order, each delivered one
    charged one attempt, a failure recorded with its retry time, the next batch not
    claiming what the batch before delivered or failed."""

    async def body() -> None:
        clock = Clock()
        async with shop(url, clock) as (store, outbox):
            for n in range(1, 6):
                for aggregate in ("a", "b", "c"):
                    await save(store, outbox, aggregate, n)
            calls: list[tuple[str, int, bool]] = []

            async def handler(event: OutboxEvent) -> None:
                ok = (event.aggregate, event.seq, event.attempt) != ("b", 3, 1)
                calls.append((event.aggregate, event.seq, ok))
                if not ok:
                    raise ValueError("b #3 is refused once")

            relay = OutboxRelay(outbox, handler, batch=4, retry=FAST_RETRY)
            assert await relay.drain() == 12  # b stops at #3, retried in 10 s
            assert in_order_per_aggregate(calls)
            assert len(calls) == 13 and len(set(calls)) == 13
            records = {(r.event.aggregate, r.event.seq): r for r in await outbox.events()}
            assert all(
                (r.state, r.attempts, r.owner) == ("delivered", 1, None)
                for key, r in records.items()
                if key[0] != "b" or key[1] < 3
            )
            failed = records["b", 3]
            assert (failed.state, failed.attempts, failed.owner) == ("pending", 1, None)
            assert failed.next_attempt_at == clock.now + 10.0
            assert [(r.state, r.owner) for k, r in records.items() if k[0] == "b" and k[1] > 3] == [
                ("pending", None)
            ] * 2
            assert relay.statistics().failed == 1
            clock.advance(10.0)
            assert await relay.drain() == 3
            assert in_order_per_aggregate(calls)
            assert await outbox.counts() == {"pending": 0, "delivered": 15, "parked": 0}

    asyncio.run(body())


def test_a_chained_claim_leaves_an_aggregate_whose_event_another_relay_took(url: str) -> None:
    """The batch's outcomes and the next claim share a transaction (on PostgreSQL one
    statement, whose parts all read the snapshot from before the mark). If another
    relay took an event of the batch over meanwhile, the mark leaves that event alone
    and the claim must still see it open: the aggregate's next event is not a head."""

    async def body() -> None:
        async with shop(url) as (store, outbox):
            for n in range(1, 4):
                await save(store, outbox, "p", n)
            entered, release = asyncio.Event(), asyncio.Event()
            seen: list[int] = []

            async def handler(event: OutboxEvent) -> None:
                seen.append(event.seq)
                if event.seq == 2:
                    entered.set()
                    await release.wait()

            relay = OutboxRelay(outbox, handler, batch=2, worker_id="x")
            draining = asyncio.create_task(relay.drain())
            await asyncio.wait_for(entered.wait(), 30)
            # another relay took #1 over (as after an expired lease)
            await store.execute(
                f"UPDATE {outbox.table} SET owner = 'y' WHERE aggregate = 'p' AND seq = 1"
            )
            release.set()
            assert await asyncio.wait_for(draining, 30) == 2
            assert seen == [1, 2]
            records = [(r.event.seq, r.state, r.owner) for r in await outbox.events(aggregate="p")]
            assert records == [(1, "pending", "y"), (2, "delivered", None), (3, "pending", None)]

    asyncio.run(body())


def test_a_head_behind_a_window_of_blocked_events_is_claimed(url: str) -> None:
    """Many pending events of a blocked aggregate (its first one parked) come before
    another aggregate's only event: the claim still finds that one (PostgreSQL looks
    for heads among the oldest due events first, then among all)."""

    async def body() -> None:
        async with shop(url) as (store, outbox):
            for n in range(1, 13):
                await save(store, outbox, "blocked", n)
            await save(store, outbox, "free", 1)
            seen: list[tuple[str, int]] = []

            async def handler(event: OutboxEvent) -> None:
                seen.append((event.aggregate, event.seq))
                if event.aggregate == "blocked":
                    raise KeyError("never")

            refuse_once = RetryPolicy(max_attempts=1, retry_on=(Exception,))
            relay = OutboxRelay(outbox, handler, batch=2, retry=refuse_once)
            assert await relay.drain() == 1
            assert seen == [("blocked", 1), ("free", 1)]
            assert await outbox.counts() == {"pending": 11, "delivered": 1, "parked": 1}

    asyncio.run(body())


# -- the inbox ---------------------------------------------------------------------------


def test_inbox_turns_redeliveries_into_one_effect_per_consumer(tmp_path: Path) -> None:
    async def body() -> None:
        kv = await open_store(f"sqlite:///{tmp_path / 'inbox.db'}", model="kv")
        async with kv, shop(f"sqlite:///{tmp_path / 'shop.db'}") as (store, outbox):
            idem = Idempotency(kv)
            effects: list[tuple[str, str, int]] = []
            failing = {"p-2"}

            def effect_for(consumer: str) -> Callable[[OutboxEvent], Awaitable[None]]:
                async def effect(event: OutboxEvent) -> None:
                    if event.payload["id"] in failing:
                        raise ConnectionError("search index unreachable")
                    effects.append((consumer, event.aggregate, event.seq))

                return effect

            for n in range(1, 4):
                await save(store, outbox, "p", n)
            search = deduplicated(effect_for("search"), idem, consumer="search")
            relay = OutboxRelay(outbox, search, retry=FAST_RETRY)
            assert await relay.run_once() == 1  # p-2 failed: nothing stored for it
            failing.clear()
            await store.execute("UPDATE multistore_outbox SET next_attempt_at = NULL")
            assert await relay.run_once() == 2
            # every event delivered again (as after a lost acknowledgement): no new effect
            await store.execute("UPDATE multistore_outbox SET state = 'pending'")
            assert await relay.run_once() == 3
            assert effects == [("search", "p", 1), ("search", "p", 2), ("search", "p", 3)]
            # another consumer has its own record of what it did
            inbox = Inbox(idem, consumer="graph")
            event = (await outbox.events(limit=1))[0].event
            assert await inbox.process(event, effect_for("graph")) is True
            assert await inbox.process(event, effect_for("graph")) is False
            assert effects[-1] == ("graph", "p", 1) and len(effects) == 4

    asyncio.run(body())


# -- crashes -----------------------------------------------------------------------------

COUNT = 6  # events p0:1, p1:1, p2:1, p0:2, p1:2, p2:2 (aggregates p0..p2)


def _spawn(config: dict[str, Any], crash_at: str | None) -> subprocess.CompletedProcess[str]:
    """Run ``outbox_worker`` with ``config`` in a process (SIGKILLed at ``crash_at``)."""
    env = {k: v for k, v in os.environ.items() if k != "OUTBOX_CRASH_AT"}
    if crash_at is not None:
        env["OUTBOX_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "tests.consistency.outbox_worker", json.dumps(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def _worker(config: dict[str, Any], crash_at: str | None = None) -> dict[str, Any]:
    done = _spawn(config, crash_at)
    if crash_at is not None:
        assert done.returncode == -9, f"expected a SIGKILL at {crash_at}:\n{done.stderr}"
        return {}
    assert done.returncode == 0, f"worker failed ({done.returncode}):\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.server)])
def crash_config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "sqlite":
        outbox = f"sqlite:///{tmp_path / 'shop.db'}"
    else:
        outbox = str(request.getfixturevalue("postgres_url"))
    return {
        "outbox": outbox,
        "inbox": f"sqlite:///{tmp_path / 'inbox.db'}",
        "effects": f"sqlite:///{tmp_path / 'effects.db'}",
        "count": COUNT,
        "worker": "relay-1",
        "lease": 1.0,
        "idem_lease": 1.0,
    }


async def _effect_rows(config: dict[str, Any]) -> dict[str, int]:
    """Effect rows per event (``aggregate:seq``)."""
    effects = await open_store(config["effects"], model="relational")
    assert isinstance(effects, RelationalStore)
    async with effects:
        rows = await effects.fetch_all(
            "SELECT aggregate, seq, COUNT(*) AS n FROM effects GROUP BY aggregate, seq"
        )
    return {f"{r['aggregate']}:{r['seq']}": int(r["n"]) for r in rows}


@pytest.mark.parametrize(
    ("crash_at", "restart_as", "inbox", "effect_rows", "skipped"),
    [
        # killed after the handler and its inbox record, before the event was marked
        # delivered: redelivered, and the inbox skips it
        ("after_effect", "relay-1", True, 1, True),
        ("after_effect", "relay-2", True, 1, True),  # another relay, once the lease ran out
        # without the inbox the redelivery repeats the effect
        ("after_effect", "relay-1", False, 2, False),
        ("before_effect", "relay-1", True, 1, False),
        # killed between the effect and the inbox record: the handler runs again once
        # the inbox lease of the dead run ran out (the limit the docs name)
        ("in_effect", "relay-1", True, 2, False),
    ],
)
def test_sigkill_during_delivery_then_restart_delivers_everything(
    crash_config: dict[str, Any],
    crash_at: str,
    restart_as: str,
    inbox: bool,
    effect_rows: int,
    skipped: bool,
) -> None:
    config = dict(crash_config, inbox=crash_config["inbox"] if inbox else None)
    _worker(dict(config, mode="write"))
    _worker(dict(config, mode="relay"), crash_at=f"{crash_at}:p1:2")
    result = _worker(dict(config, mode="relay", worker=restart_as))
    assert (result["pending"], result["parked"], result["delivered"]) == (0, 0, COUNT)
    assert "p1:2" in result["handed"]  # delivered again after the crash
    assert ("p1:2" in result["skipped"]) is skipped
    counted = asyncio.run(_effect_rows(config))
    assert counted.pop("p1:2") == effect_rows
    others = {f"p{a}:{s}" for a in range(3) for s in (1, 2)} - {"p1:2"}
    assert set(counted) == others
    if inbox:
        assert set(counted.values()) == {1}
    else:  # the whole unmarked batch was delivered again
        assert set(counted.values()) <= {1, 2}


@pytest.fixture
def poison_config(relational_url: str, tmp_path: Path) -> dict[str, Any]:
    return {
        "outbox": relational_url,
        "inbox": None,
        "effects": f"sqlite:///{tmp_path / 'effects.db'}",
        "count": 9,  # p0:1..3, p1:1..3, p2:1..3
        "worker": "relay-1",
        "lease": 1.0,
        "max_attempts": 3,
    }


def test_sigkill_at_event_3_of_a_batch_charges_and_parks_that_event(
    poison_config: dict[str, Any],
) -> None:
    """The handler kills the relay process on event 3 of aggregate p0 every time, the
    first time inside a batch that holds p0:1..3. Each restarted relay charges the
    attempt to p0:3 (not to the claim's head p0:1), p0:3 is the event parked after
    the policy's 3 attempts, and p0:1 and p0:2 are handed over once more after the
    first crash, not once per crash."""
    config = poison_config
    _worker(dict(config, mode="write"))
    killed = 0
    for _ in range(8):
        run = _spawn(dict(config, mode="relay"), "in_effect:p0:3")
        if run.returncode == 0:
            break
        assert run.returncode == -9, run.stderr
        killed += 1
    else:
        raise AssertionError(f"the relay never got past the poison event ({killed} kills)")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert (result["pending"], result["parked"], result["delivered"]) == (0, 1, 8)
    # one kill in the first batch (not charged: nothing says which event ran), then one
    # per recorded attempt of p0:3
    assert killed == 4

    async def parked() -> list[tuple[str, int, int, str]]:
        async with shop(config["outbox"]) as (_store, outbox):
            return [
                (r.event.aggregate, r.event.seq, r.attempts, r.error.type if r.error else "")
                for r in await outbox.events(aggregate="p0")
            ]

    assert asyncio.run(parked()) == [
        ("p0", 1, 1, ""),
        ("p0", 2, 1, ""),
        ("p0", 3, 3, "DeliveryInterrupted"),
    ]
    handed = asyncio.run(_effect_rows(config))
    assert handed == {
        "p0:1": 2,
        "p0:2": 2,
        "p0:3": 4,
        **{f"p{a}:{s}": 1 for a in (1, 2) for s in (1, 2, 3)},
    }
