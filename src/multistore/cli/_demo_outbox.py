"""Demo section "outbox": the search index kept in step with the catalog of record.

Products are saved in the ``orders`` role's relational store together with a
``product.upserted`` event in the same transaction (a price check that fails rolls
both back). A relay indexes the events into the ``catalog`` role's search store, in
order per product; the first attempt finds the index "unreachable" and is retried
after a short backoff. Then one event is handed over again, as after a relay that
died between indexing and marking it delivered: the inbox (on the ``idempotency``
role's store) knows it and skips it. Tables and index are re-created on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, cast

from multistore.cli._demo import SectionReport
from multistore.cli._human import table
from multistore.config import Config
from multistore.consistency import (
    Idempotency,
    Inbox,
    Outbox,
    OutboxEvent,
    OutboxRelay,
    RetryPolicy,
)
from multistore.errors import MultistoreError
from multistore.stores.relational import RelationalStore
from multistore.stores.search import FieldType, SearchSchema, SearchStore

TABLE = "demo_products"
OUTBOX = "demo_outbox"
INDEX = "demo_products_synced"

SAVES: list[dict[str, Any]] = [
    {"id": "p1", "name": "Gaming Laptop", "category": "electronics", "price": 1299.0},
    {"id": "p2", "name": "Laptop sleeve", "category": "accessories", "price": 29.5},
    {"id": "p1", "name": "Gaming Laptop", "category": "electronics", "price": 999.0},
]
REJECTED = {"id": "p2", "name": "Laptop sleeve", "category": "accessories", "price": 0.0}


class PriceCheckError(Exception):
    """The business rule that rolls a save back: no product is free."""


async def _reset(store: RelationalStore, search: SearchStore) -> Outbox:
    for name in (TABLE, OUTBOX, f"{OUTBOX}_seq"):
        await store.execute(f"DROP TABLE IF EXISTS {name}")
    await store.execute(
        f"CREATE TABLE {TABLE} (id VARCHAR(16) PRIMARY KEY, name VARCHAR(200) NOT NULL, "
        "category VARCHAR(50) NOT NULL, price DOUBLE PRECISION NOT NULL)"
    )
    outbox = Outbox(store, table=OUTBOX)
    await outbox.setup()
    if INDEX in await search.indexes():
        await search.drop_index(INDEX)
    schema = {"name": FieldType.TEXT, "category": FieldType.KEYWORD, "price": FieldType.NUMERIC}
    await search.create_index(INDEX, SearchSchema(schema))
    return outbox


async def _save(store: RelationalStore, outbox: Outbox, product: dict[str, Any]) -> None:
    """The row and its event in one transaction (an upsert that every SQL dialect
    here understands: update, else insert)."""
    async with store.transaction() as tx:
        changed = await tx.execute(
            f"UPDATE {TABLE} SET name = :name, category = :category, price = :price WHERE id = :id",
            product,
        )
        if not changed:
            await tx.execute(
                f"INSERT INTO {TABLE} (id, name, category, price) "
                "VALUES (:id, :name, :category, :price)",
                product,
            )
        await outbox.add(tx, f"product:{product['id']}", "product.upserted", product)
        if product["price"] <= 0:
            raise PriceCheckError(f"product {product['id']}: a price must be positive")


async def outbox_section(config: Config) -> SectionReport:
    """Outbox: the search index follows the catalog, no dual write."""
    report = SectionReport("outbox: the search index kept in step with the catalog")
    store = cast(RelationalStore, await config.open("orders"))
    search = cast(SearchStore, await config.open("catalog"))
    inbox_store = await config.open("idempotency")
    try:
        outbox = await _reset(store, search)
        for product in SAVES:
            await _save(store, outbox, product)
        with contextlib.suppress(PriceCheckError):
            await _save(store, outbox, REJECTED)
        added = await outbox.counts()

        indexed: list[dict[str, Any]] = []
        failures: list[str] = []

        async def index_product(event: OutboxEvent) -> None:
            if not failures:  # the first attempt finds the index down
                failures.append(f"{event.aggregate} #{event.seq}")
                raise ConnectionError("search index unreachable")
            await search.index(INDEX, [event.payload])
            indexed.append({"aggregate": event.aggregate, "seq": event.seq, **event.payload})

        inbox = Inbox(Idempotency(inbox_store), consumer="demo-search-index")
        retry = RetryPolicy(max_attempts=5, initial_delay=0.02, max_delay=0.1, jitter=0.0)
        relay = OutboxRelay(outbox, inbox.wrap(index_product), retry=retry)
        deadline = time.monotonic() + 30.0
        while (await outbox.counts())["pending"]:
            if time.monotonic() > deadline:
                raise MultistoreError("the demo's relay did not deliver within 30 s")
            if not await relay.run_once():
                await asyncio.sleep(0.02)  # the failed product's backoff
        delivered = await outbox.counts()

        (first,) = await outbox.events(aggregate="product:p1", limit=1)
        again = await inbox.process(first.event, index_product)
        found = await search.search(INDEX, "laptop", sort=("price", "asc"))
        rows = await store.fetch_all(f"SELECT id, price FROM {TABLE} ORDER BY id")
    finally:
        for opened in (store, search, inbox_store):
            await opened.close()

    shown = table("product", ">event", ">indexed price")
    for item in indexed:
        shown.add_row(item["aggregate"], f"#{item['seq']}", f"{item['price']:.2f}")
    hits = ", ".join(f"{h.id} {h.doc['price']:.2f}" for h in found.hits)
    redelivered = "ran again" if again else "skipped by the inbox"
    report.add(
        shown,
        "catalog (system of record) → outbox → relay → search index",
        "Each save writes the product row and its event in one transaction, so the index "
        "never misses a save nor sees one that rolled back. What happened:\n"
        "• the price-0 save of p2 was rolled back with its row: no event, nothing indexed;\n"
        f"• the relay's first delivery ({failures[0]}) failed and was retried after a "
        "short backoff;\n"
        f"• event p1 #1, handed over a second time (as after a relay crash): {redelivered};\n"
        f"• search 'laptop' by price now finds: {hits}.",
    )
    report.proved = (
        "the search index followed the catalog through the outbox: a rolled-back save "
        f"sent nothing, a failed delivery was retried, a redelivery was {redelivered}"
    )
    report.data.update(
        {
            "backends": {
                "catalog_of_record": config.role("orders").url.scheme,
                "search": config.role("catalog").url.scheme,
                "inbox": config.role("idempotency").url.scheme,
            },
            "events_after_saves": added,
            "events_after_relay": delivered,
            "failed_attempts": failures,
            "indexed": [(i["aggregate"], i["seq"], i["price"]) for i in indexed],
            "redelivery_ran_again": again,
            "search_laptop": [(h.id, h.doc["price"]) for h in found.hits],
            "catalog_rows": [(r["id"], float(r["price"])) for r in rows],
        }
    )
    return report
