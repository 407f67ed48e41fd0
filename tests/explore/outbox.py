"""The outbox under the explorer: a writer adding items with their events, one or two
relays delivering them (crashing, restarting, stalling past their leases), a handler
that refuses some "poison" events for good.

Invariants once a fault-free relay has delivered what it can:
* atomic: an event exists for every committed item and for no other;
* in order: the handler gets event N of an aggregate only after it returned for N-1;
* at least once: every event is delivered, except a parked one and those after it in
  its aggregate;
* a parked event is one whose handler refused it, or during whose handling the relay
  died (counting the moments after the handler returned and before the relay handed
  over the next event: a delivery is recorded before the next one starts, so a crash
  while the handler of event 3 runs is not charged to events 1 and 2).
"""

from __future__ import annotations

import asyncio
from typing import cast

from multistore.consistency import Outbox, OutboxEvent, OutboxRelay, RetryPolicy
from multistore.errors import MultistoreError
from multistore.lab.explore import Actor, InvariantViolation, Simulation
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore

AGGREGATES = ("a", "b")
LEASE = 10.0


class Poison(Exception):
    """The handler refuses this event, every time (retried: it might be transient)."""


async def outbox(sim: Simulation) -> None:
    url = f"sqlite:///{sim.directory / 'shop.db'}"
    setup = cast(RelationalStore, await open_store(url, model="relational"))
    await setup.execute("CREATE TABLE items (id TEXT PRIMARY KEY, agg TEXT NOT NULL)")
    await Outbox(setup, clock=sim.wall_time).setup()
    await setup.close()

    count = sim.choices.randint(2, 6)
    poison = {f"i{n}" for n in range(count) if sim.choices.random() < 0.15}
    returned: set[str] = set()  # event ids whose handler returned
    refused: set[str] = set()  # event ids whose handler raised
    entries: list[tuple[str, int]] = []  # (aggregate, seq) at each handler entry
    handling: dict[str, str] = {}  # relay -> event id in its handler now
    died_in: set[str] = set()  # event ids whose handler ran when its relay died
    last_returned: dict[str, str] = {}  # relay -> its last event, until it takes the next
    seqs: dict[str, tuple[str, int]] = {}

    async def write(actor: Actor) -> None:
        try:
            store = cast(RelationalStore, await open_store(url, model="relational"))
        except MultistoreError:
            return  # the process could not start
        box = Outbox(store, clock=actor.wall_clock)
        try:
            for n in range(count):
                item = f"i{n}"
                agg = AGGREGATES[n % 2] if sim.choices.random() < 0.8 else AGGREGATES[0]
                try:
                    async with store.transaction() as tx:
                        await tx.execute("INSERT INTO items VALUES (:i, :a)", {"i": item, "a": agg})
                        await box.add(tx, agg, "item.added", {"id": item})
                except MultistoreError as exc:
                    sim.note(f"{actor.label} add {item}: {type(exc).__name__}")
        finally:
            await store.close()

    def relay_main(name: str, rounds: int) -> Actor:
        async def run(actor: Actor) -> None:
            def died() -> None:
                died_in.add(handling.get(name, ""))
                died_in.add(last_returned.get(name, ""))

            actor.on_crash.append(died)
            try:
                store = cast(RelationalStore, await open_store(url, model="relational"))
            except MultistoreError:
                return
            box = Outbox(store, clock=actor.wall_clock)

            async def handle(event: OutboxEvent) -> None:
                entries.append((event.aggregate, event.seq))
                seqs[event.event_id] = (event.aggregate, event.seq)
                handling[name] = event.event_id
                last_returned.pop(name, None)
                try:
                    item = cast(dict[str, str], event.payload)["id"]
                    if item in poison:
                        raise Poison(item)
                    await store.fetch_val("SELECT 1 FROM items WHERE id = :i", {"i": item})
                    returned.add(event.event_id)
                    last_returned[name] = event.event_id
                except Exception:
                    refused.add(event.event_id)
                    raise
                except asyncio.CancelledError:  # the relay was stopped inside the handler
                    died_in.add(event.event_id)
                    raise
                finally:
                    handling.pop(name, None)

            relay = OutboxRelay(
                box,
                handle,
                batch=sim.choices.randint(1, 4),
                lease=LEASE,
                worker_id=name,
                retry=RetryPolicy(max_attempts=2, initial_delay=1.0),
            )
            try:
                for _ in range(rounds):
                    # drain() writes each batch's outcomes with the next claim
                    drain = sim.choices.random() < 0.5
                    try:
                        await actor.call(relay.drain() if drain else relay.run_once())
                    except (MultistoreError, asyncio.CancelledError) as exc:
                        how = "drain" if drain else "run_once"
                        sim.note(f"{actor.label} {how}: {type(exc).__name__}")
                    await asyncio.sleep(sim.choices.uniform(0, 3))
            finally:
                await store.close()

        return sim.spawn(name, run, restart=run, after_steps=sim.choices.randint(0, 20))

    actors = [sim.spawn("writer", write)]
    actors.append(relay_main("r1", sim.choices.randint(1, 6)))
    if sim.choices.random() < 0.5:
        actors.append(relay_main("r2", sim.choices.randint(1, 6)))
    await sim.join(*actors)
    sim.quiesce()

    store = cast(RelationalStore, await open_store(url, model="relational"))
    box = Outbox(store, clock=sim.wall_time)

    async def handle(event: OutboxEvent) -> None:
        entries.append((event.aggregate, event.seq))
        seqs[event.event_id] = (event.aggregate, event.seq)
        item = cast(dict[str, str], event.payload)["id"]
        if item in poison:
            refused.add(event.event_id)
            raise Poison(item)
        returned.add(event.event_id)

    relay = OutboxRelay(
        box,
        handle,
        lease=LEASE,
        worker_id="final",
        retry=RetryPolicy(max_attempts=2, initial_delay=1.0),
    )
    try:
        for _ in range(200):  # leases of dead relays and retry waits run out meanwhile
            await relay.run_once()
            if (await box.counts())["pending"] == 0:
                break
            await asyncio.sleep(1.0)
        await check(store, box, refused, returned, entries, seqs, died_in)
    finally:
        await store.close()


async def check(
    store: RelationalStore,
    box: Outbox,
    refused: set[str],
    returned: set[str],
    entries: list[tuple[str, int]],
    seqs: dict[str, tuple[str, int]],
    died_in: set[str],
) -> None:
    items = {r["id"]: r["agg"] for r in await store.fetch_all("SELECT id, agg FROM items")}
    events = await box.events(limit=1000)
    by_item = {cast(dict[str, str], r.event.payload)["id"]: r for r in events}
    if set(by_item) != set(items):
        raise InvariantViolation(
            f"items {sorted(items)} but events for {sorted(by_item)}: not atomic"
        )
    # in order: entering N needs N-1 returned before (entries are in time order)
    done: dict[str, int] = {}
    ids = {v: k for k, v in seqs.items()}
    for agg, seq in entries:
        if seq > 1 and done.get(agg, 0) < seq - 1:
            raise InvariantViolation(
                f"{agg} #{seq} handed over before the handler returned for #{seq - 1}"
            )
        if ids.get((agg, seq)) in returned:
            done[agg] = max(done.get(agg, 0), seq)
    parked_by_agg: dict[str, int] = {}
    for record in events:
        event = record.event
        item = cast(dict[str, str], event.payload)["id"]
        if record.state == "parked":
            if event.event_id not in refused and event.event_id not in died_in:
                raise InvariantViolation(
                    f"{event.aggregate} #{event.seq} ({item}) parked, but its handler never "
                    f"refused it and no relay died while handling it (died in: "
                    f"{sorted(seqs.get(e, ('?', 0)) for e in died_in if e)})"
                )
            parked_by_agg[event.aggregate] = min(
                event.seq, parked_by_agg.get(event.aggregate, event.seq)
            )
    for record in events:
        event = record.event
        blocked = parked_by_agg.get(event.aggregate)
        if (blocked is None or event.seq < blocked) and event.event_id not in returned:
            raise InvariantViolation(
                f"{event.aggregate} #{event.seq} committed but never delivered "
                f"(state {record.state})"
            )
