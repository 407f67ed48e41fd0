"""The outbox relayed to NATS JetStream (a stream of three replicas on a three-server
cluster), and a durable consumer feeding an inbox: a server killed while the relay
publishes loses no event, and no event reaches the inbox's effect twice."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from multistore.consistency import (
    Idempotency,
    Inbox,
    JetStreamDestination,
    Outbox,
    OutboxEvent,
    OutboxRelay,
    RetryPolicy,
    consume_jetstream,
)
from multistore.lab._nats import NatsCluster
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore

pytestmark = pytest.mark.server

AGGREGATES = 6
PER_AGGREGATE = 10
QUICK_RETRY = RetryPolicy(
    max_attempts=100, initial_delay=0.05, max_delay=0.5, jitter=0.0, retry_on=(Exception,)
)


async def wait_for(check: object, what: str, within: float = 60.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def test_events_survive_a_killed_server_and_reach_the_effect_once(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    stream = f"OUTBOX_{uuid.uuid4().hex[:8].upper()}"
    prefix = stream.lower()
    killed: list[str] = []

    async def main() -> None:
        store = await open_store(f"sqlite:///{tmp_path / 'shop.db'}", model="relational")
        idem_store = await open_store(f"sqlite:///{tmp_path / 'inbox.db'}", model="kv")
        assert isinstance(store, RelationalStore)
        destination = await JetStreamDestination.open(
            nats_cluster.url() + "?timeout=2", stream=stream, prefix=prefix
        )
        try:
            outbox = Outbox(store)
            await outbox.setup()
            for n in range(PER_AGGREGATE):
                for a in range(AGGREGATES):
                    async with store.transaction() as tx:
                        await outbox.add(tx, f"order:{a}", "OrderChanged", {"a": a, "n": n})
            total = AGGREGATES * PER_AGGREGATE
            halfway, resumed = asyncio.Event(), asyncio.Event()

            async def publish(event: OutboxEvent) -> None:
                if destination.published == total // 2:  # hold the relay here ...
                    halfway.set()
                    await resumed.wait()
                await destination(event)

            relay = OutboxRelay(outbox, publish, batch=5, retry=QUICK_RETRY)
            stop = asyncio.Event()
            running = asyncio.create_task(relay.run(stop))
            await asyncio.wait_for(halfway.wait(), 60)
            info = await destination.js.stream_info(stream)
            leader = info.cluster.leader if info.cluster else None
            victim = next(s for s in nats_cluster.servers if s.server_name == leader)
            victim.kill()  # ... kill the stream's leader, and let it go on
            killed.append(victim.server_name)
            resumed.set()

            async def all_delivered() -> bool:
                return (await outbox.counts()).get("delivered", 0) == total

            await wait_for(all_delivered, "every event delivered to JetStream")
            stop.set()
            await running
            info = await destination.js.stream_info(stream)
            assert info.state.messages == total  # none lost, none stored twice

            # A relay that lost its acknowledgements publishes again: dropped by id.
            again = await outbox.events(limit=total)
            for record in again:
                await destination(record.event)
            assert destination.duplicates >= total
            assert (await destination.js.stream_info(stream)).state.messages == total

            effects: list[OutboxEvent] = []

            async def effect(event: OutboxEvent) -> None:
                effects.append(event)

            inbox = Inbox(Idempotency(idem_store), consumer="shipping")
            for durable in ("shipping", "shipping-replayed"):
                # The second durable consumer gets every event again, as a redelivery
                # after a crash between the effect and the acknowledgement would.
                done = asyncio.Event()
                consumer = asyncio.create_task(
                    consume_jetstream(destination, inbox, effect, done, durable=durable)
                )
                await wait_for(
                    lambda d=durable: _consumer_done(destination, stream, d, total),  # type: ignore[misc]
                    f"consumer {durable} acknowledged everything",
                )
                done.set()
                assert await consumer == total
            ids = [e.event_id for e in effects]
            assert len(ids) == total == len(set(ids))  # each event's effect exactly once
            by_aggregate: dict[str, list[int]] = defaultdict(list)
            for e in effects:
                by_aggregate[e.aggregate].append(e.seq)
            assert all(seqs == sorted(seqs) for seqs in by_aggregate.values())
        finally:
            await destination.close()
            await store.close()
            await idem_store.close()

    try:
        asyncio.run(main())
    finally:
        for server in nats_cluster.servers:
            if server.server_name in killed:
                server.start()
        nats_cluster.wait_healthy()


async def _consumer_done(
    destination: JetStreamDestination, stream: str, durable: str, total: int
) -> bool:
    try:
        info = await destination.js.consumer_info(stream, durable)
    except Exception:
        return False
    return bool(info.ack_floor.stream_seq >= total and info.num_ack_pending == 0)
