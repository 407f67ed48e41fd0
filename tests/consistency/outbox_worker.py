"""An outbox writer or relay process for the crash tests.

    python -m tests.consistency.outbox_worker CONFIG_JSON

CONFIG_JSON: ``{"outbox": url, "inbox": kv url | null, "effects": url, "mode": "write" |
"relay", "count": n, "worker": id, "lease": s, "idem_lease": s, "max_attempts": n}``
(``max_attempts``: of the relay's retry policy, 20 if not given).

- ``write``: create the tables, then write ``count`` products, each with its event
  (aggregates ``p0``, ``p1``, ``p2`` in turn), one transaction each; print the counts.
- ``relay``: run an :class:`OutboxRelay` until no event is pending but those held back
  by a parked event of their aggregate (60 s at most); the handler inserts one row per
  call into ``effects`` (deduplicated by an inbox when ``inbox`` is a URL). Prints one
  JSON line: the outbox's counts, the events handed to the handler (``handed``) and
  those the inbox skipped (``skipped``).

``OUTBOX_CRASH_AT=<point>:<aggregate>:<seq>`` SIGKILLs the process while that event is
delivered: ``before_effect`` (handler called, nothing done), ``in_effect`` (the effect
row committed, the inbox record not yet written), ``after_effect`` (the handler and
its inbox record done, the event not yet marked delivered).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

from multistore.consistency import (
    Idempotency,
    IdempotencyPolicy,
    Outbox,
    OutboxEvent,
    OutboxRelay,
    RetryPolicy,
    deduplicated,
)
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore


def _retry(max_attempts: int) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=max_attempts, initial_delay=0.05, max_delay=0.5, retry_on=(Exception,)
    )


def _crash_if(point: str, event: OutboxEvent) -> None:
    if os.environ.get("OUTBOX_CRASH_AT") == f"{point}:{event.aggregate}:{event.seq}":
        os.kill(os.getpid(), signal.SIGKILL)


async def _relational(url: str) -> RelationalStore:
    store = await open_store(url, model="relational")
    assert isinstance(store, RelationalStore)
    return store


async def write(config: dict[str, Any]) -> None:
    store, effects = await _relational(config["outbox"]), await _relational(config["effects"])
    async with store, effects:
        await effects.execute(
            "CREATE TABLE effects (event_id VARCHAR(36), aggregate VARCHAR(50), seq INT)"
        )
        await store.execute("CREATE TABLE products (id VARCHAR(50) PRIMARY KEY, n INT)")
        outbox = Outbox(store)
        await outbox.setup()
        for n in range(int(config["count"])):
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO products VALUES (:id, :n)", {"id": f"p-{n}", "n": n})
                await outbox.add(tx, f"p{n % 3}", "product.upserted", {"id": f"p-{n}"})
        print(json.dumps(await outbox.counts()), flush=True)


async def relay(config: dict[str, Any]) -> None:
    store, effects = await _relational(config["outbox"]), await _relational(config["effects"])
    async with store, effects:
        outbox = Outbox(store)
        handed: list[str] = []
        skipped: list[str] = []

        async def effect(event: OutboxEvent) -> None:
            await effects.execute(
                "INSERT INTO effects VALUES (:id, :aggregate, :seq)",
                {"id": event.event_id, "aggregate": event.aggregate, "seq": event.seq},
            )
            _crash_if("in_effect", event)

        inner: Any = effect
        if config.get("inbox"):
            kv = await open_store(config["inbox"], model="kv")
            policy = IdempotencyPolicy(lease=float(config["idem_lease"]))
            inner = deduplicated(effect, Idempotency(kv, policy=policy), consumer="effects")

        async def handler(event: OutboxEvent) -> None:
            handed.append(f"{event.aggregate}:{event.seq}")
            _crash_if("before_effect", event)
            if await inner(event) is False:
                skipped.append(f"{event.aggregate}:{event.seq}")
            _crash_if("after_effect", event)

        worker = OutboxRelay(
            outbox,
            handler,
            lease=float(config["lease"]),
            worker_id=config["worker"],
            retry=_retry(int(config.get("max_attempts", 20))),
        )
        give_up = time.monotonic() + 60
        while await _waiting(outbox):
            # drain(): each batch's outcomes are written with the next claim
            if not await worker.drain():
                if time.monotonic() > give_up:
                    raise TimeoutError(f"events still pending: {await outbox.counts()}")
                await asyncio.sleep(0.05)
        counts = await outbox.counts()
        print(json.dumps({**counts, "handed": handed, "skipped": skipped}), flush=True)


async def _waiting(outbox: Outbox) -> bool:
    """Whether an event is pending that no parked event of its aggregate holds back."""
    blocked = {r.event.aggregate for r in await outbox.parked()}
    pending = await outbox.events(state="pending", limit=10_000)
    return any(r.event.aggregate not in blocked for r in pending)


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    asyncio.run(write(settings) if settings["mode"] == "write" else relay(settings))
