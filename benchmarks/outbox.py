"""``multistore bench outbox``: the relay's throughput and the outbox's cost on the write path.

- **Relay, PostgreSQL.** Events relayed per second by :class:`OutboxRelay` (claims
  with leases, in order per aggregate, ``batch=100``) against a bare psycopg loop
  over a plain queue table doing what a hand-written relay does: per batch one
  transaction with ``SELECT … ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED``, the
  handler for each row, ``UPDATE … SET delivered = true WHERE id = ANY(…)``, commit
  (no order per aggregate beyond the id order, no leases: the row locks are the
  claim). Ours drains with :meth:`OutboxRelay.drain` (each batch's outcomes written
  with the next claim). Both handlers decode the JSON payload and do nothing else.
  Each round refills both tables with the same events (not timed) and drains them.
- **Write path.** One transaction that inserts a product row and adds its event with
  :meth:`Outbox.add`, against the same transaction without the event (PostgreSQL
  and an SQLite file): the price of the outbox on the write path; and against the
  same transaction with one plain ``INSERT`` into a table with only a primary key
  instead (the floor for "one more statement").
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import psycopg

from benchmarks._harness import BenchEnv, Row, compare, compare_throughput
from multistore.consistency._outbox import Outbox, OutboxEvent, new_event_id
from multistore.consistency._outbox_relay import OutboxRelay
from multistore.errors import BenchmarkError
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore

BATCH = 100
PRODUCTS = (
    "CREATE TABLE products (id BIGINT PRIMARY KEY, name VARCHAR(100), price DOUBLE PRECISION)"
)
BARE = (
    "CREATE TABLE bare_outbox (id BIGSERIAL PRIMARY KEY, aggregate TEXT NOT NULL, "
    "payload TEXT NOT NULL, delivered BOOLEAN NOT NULL DEFAULT false)"
)
PLAIN = "CREATE TABLE plain_events (id BIGINT PRIMARY KEY, aggregate VARCHAR(255), payload TEXT)"
BARE_INDEX = "CREATE INDEX bare_outbox_queue ON bare_outbox (delivered, id)"


async def _open(url: str) -> RelationalStore:
    store = await open_store(url, model="relational")
    assert isinstance(store, RelationalStore)
    return store


def _events(aggregates: int, per_aggregate: int) -> list[tuple[str, int, str]]:
    """(aggregate, seq, payload), oldest first, aggregates interleaved."""
    return [
        (f"product:{a}", n, json.dumps({"id": a, "name": f"product {a}", "price": n}))
        for n in range(1, per_aggregate + 1)
        for a in range(aggregates)
    ]


async def _handle(event: OutboxEvent) -> None:
    pass


class _RelayCase:
    """Both sides of one relay case, each a timed drain of the same events."""

    def __init__(self, store: RelationalStore, raw: psycopg.AsyncConnection[Any]) -> None:
        self.store = store
        self.raw = raw
        self.outbox = Outbox(store)
        self.relay = OutboxRelay(self.outbox, _handle, batch=BATCH)
        self.events: list[tuple[str, int, str]] = []

    async def setup(self) -> None:
        await self.outbox.setup()
        await self.store.execute(BARE)
        await self.store.execute(BARE_INDEX)

    async def ours(self) -> float:
        table = self.outbox.table
        await self.store.execute(f"DELETE FROM {table}")
        now = time.time()
        await self.store.executemany(
            f"INSERT INTO {table} (aggregate, seq, event_id, event_type, payload, created_at, "
            "state, attempts) VALUES (:aggregate, :seq, :id, 'product.upserted', :payload, "
            ":now, 'pending', 0)",
            [
                {"aggregate": a, "seq": s, "id": new_event_id(), "payload": p, "now": now}
                for a, s, p in self.events
            ],
        )
        await self.store.execute(f"VACUUM ANALYZE {table}")
        start = time.perf_counter()
        relayed = await self.relay.drain()
        elapsed = time.perf_counter() - start
        if relayed != len(self.events):
            raise BenchmarkError(f"the relay delivered {relayed} of {len(self.events)} events")
        return relayed / elapsed

    async def anchor(self) -> float:
        raw = self.raw
        await raw.execute("DELETE FROM bare_outbox")
        async with raw.cursor() as cur:
            await cur.executemany(
                "INSERT INTO bare_outbox (aggregate, payload) VALUES (%s, %s)",
                [(a, p) for a, _, p in self.events],
            )
        await raw.execute("VACUUM ANALYZE bare_outbox")
        start = time.perf_counter()
        relayed = 0
        while True:
            async with raw.transaction():
                cur = await raw.execute(
                    "SELECT id, aggregate, payload FROM bare_outbox WHERE NOT delivered "
                    "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                    (BATCH,),
                )
                rows = await cur.fetchall()
                for _, _, payload in rows:
                    json.loads(payload)  # the handler's share of the work, as in ours
                if rows:
                    await raw.execute(
                        "UPDATE bare_outbox SET delivered = true WHERE id = ANY(%s)",
                        ([r[0] for r in rows],),
                    )
            if not rows:
                break
            relayed += len(rows)
        elapsed = time.perf_counter() - start
        if relayed != len(self.events):
            raise BenchmarkError(f"the bare loop delivered {relayed} of {len(self.events)}")
        return relayed / elapsed


async def _relay_rows(env: BenchEnv) -> list[Row]:
    url = await env.url("postgresql")  # a plain postgresql:// URI, as libpq reads it
    store = await _open(url)
    raw = await psycopg.AsyncConnection.connect(url, autocommit=True)
    rows = []
    try:
        case = _RelayCase(store, raw)
        await case.setup()
        for aggregates, per_aggregate in ((50, 40), (2000, 1)):
            case.events = _events(aggregates, per_aggregate)
            await case.ours()  # warm-up
            await case.anchor()
            rows.append(
                await compare_throughput(
                    f"relay {len(case.events)} events, {aggregates} aggregates, batch {BATCH}, "
                    "postgresql",
                    case.ours,
                    case.anchor,
                    "bare psycopg SELECT FOR UPDATE SKIP LOCKED / UPDATE loop",
                    unit="events/s",
                    rounds=5,
                )
            )
    finally:
        await raw.close()
        await store.close()
    return rows


async def _write_rows(url: str, label: str) -> list[Row]:
    store = await _open(url)
    try:
        outbox = Outbox(store)
        await outbox.setup()
        await store.execute(PRODUCTS)
        await store.execute(PLAIN)
        ids = itertools.count(1)
        insert = "INSERT INTO products (id, name, price) VALUES (:id, :name, :price)"

        async def with_event() -> None:
            n = next(ids)
            product = {"id": n, "name": f"product {n}", "price": 9.5}
            async with store.transaction() as tx:
                await tx.execute(insert, product)
                await outbox.add(tx, f"product:{n % 100}", "product.upserted", product)

        async def without_event() -> None:
            n = next(ids)
            async with store.transaction() as tx:
                await tx.execute(insert, {"id": n, "name": f"product {n}", "price": 9.5})

        async def with_plain_insert() -> None:
            n = next(ids)
            product = {"id": n, "name": f"product {n}", "price": 9.5}
            async with store.transaction() as tx:
                await tx.execute(insert, product)
                await tx.execute(
                    "INSERT INTO plain_events (id, aggregate, payload) "
                    "VALUES (:id, :aggregate, :payload)",
                    {"id": n, "aggregate": f"product:{n % 100}", "payload": json.dumps(product)},
                )

        return [
            await compare(
                f"write a product + its event in one transaction, {label}",
                with_event,
                without_event,
                "the same transaction without the event",
            ),
            await compare(
                f"write a product + its event in one transaction vs one plain INSERT, {label}",
                with_event,
                with_plain_insert,
                "the same transaction with one INSERT into a table with only a primary key",
            ),
        ]
    finally:
        await store.close()


async def run() -> list[Row]:
    env = BenchEnv()
    try:
        rows = await _relay_rows(env)
        rows.extend(await _write_rows(await env.url("postgresql"), "postgresql"))
        rows.extend(await _write_rows(f"sqlite:///{env.tmp / 'write.db'}", "sqlite"))
    finally:
        env.close()
    return rows
