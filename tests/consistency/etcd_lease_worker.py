"""An outbox relay or a saga worker holding an etcd lease, for test_etcd_leases.

    python -m tests.consistency.etcd_lease_worker CONFIG_JSON

CONFIG_JSON: ``{"kind": "relay" | "saga", "db": url, "etcd": url, "ttl": s,
"worker": id, "at": "hang" | "stop" | null, "status": path}``.

The relay delivers the outbox of ``db``; the saga worker runs the sagas ``steps`` of
``db``'s log (PostgreSQL). Both hold a database lease of 600 s, so only the etcd lease can make
their claims pass to another process within a test. Every handler call and every
step writes a row ``effects(n, worker, owner, item)`` first, where ``owner`` is the
name the process's claims carry at that moment. With ``at``, the first handler call
(or step) of the process then hangs for ever (``hang``: the test kills it) or stops
the process with SIGSTOP (``stop``: the test resumes it). ``status`` is a JSON file
the process rewrites as it changes: its etcd terms and its current owner.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from multistore.consistency import (
    EtcdLeases,
    Outbox,
    OutboxEvent,
    OutboxRelay,
    Saga,
    SagaEngine,
    SagaWorker,
    Step,
    StepContext,
)
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore

COLUMNS = "n BIGSERIAL PRIMARY KEY, worker TEXT, owner TEXT, item TEXT"
EFFECTS = f"CREATE TABLE IF NOT EXISTS effects ({COLUMNS})"


async def _relational(url: str) -> RelationalStore:
    store = await open_store(url, model="relational")
    assert isinstance(store, RelationalStore)
    return store


class Effects:
    def __init__(self, store: RelationalStore, config: dict[str, Any]) -> None:
        self.store = store
        self.config = config
        self.calls = 0

    async def record(self, owner: str, item: str) -> None:
        await self.store.execute(
            "INSERT INTO effects (worker, owner, item) VALUES (:w, :o, :i)",
            {"w": self.config["worker"], "o": owner, "i": item},
        )
        self.calls += 1
        if self.calls == 1 and self.config.get("at") == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        if self.calls == 1 and self.config.get("at") == "hang":
            await asyncio.Event().wait()


def saga(effects: Effects, engine: list[SagaEngine]) -> Saga:
    async def act(ctx: StepContext) -> str:
        await effects.record(engine[0].owner, f"{ctx.saga_id}:{ctx.step}")
        return ctx.step

    return Saga("steps", [Step("one", act), Step("two", act), Step("three", act)])


async def _status(path: Path, describe: Any, stop: asyncio.Event) -> None:
    last = None
    while not stop.is_set():
        now = describe()
        if now != last:
            path.with_suffix(".tmp").write_text(json.dumps(now))
            path.with_suffix(".tmp").replace(path)
            last = now
        await asyncio.sleep(0.02)


async def main(config: dict[str, Any]) -> None:
    store = await _relational(config["db"])
    await store.execute(EFFECTS)
    effects = Effects(store, config)
    leases = EtcdLeases(config["etcd"], ttl=float(config["ttl"]))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    status = Path(config["status"])
    if config["kind"] == "relay":
        relay: OutboxRelay

        async def handler(event: OutboxEvent) -> None:
            await effects.record(relay.owner, f"{event.aggregate}:{event.seq}")

        relay = OutboxRelay(
            Outbox(store), handler, lease=600, worker_id=config["worker"], leases=leases
        )
        etcd = relay.etcd
        assert etcd is not None
        watch = asyncio.create_task(
            _status(status, lambda: {"terms": etcd.terms, "owner": relay.owner}, stop)
        )
        await relay.run(stop)
    else:
        engines: list[SagaEngine] = []
        engine = SagaEngine(
            store, [saga(effects, engines)], worker_id=config["worker"], lease=600, leases=leases
        )
        engines.append(engine)
        etcd = engine.etcd
        assert etcd is not None
        watch = asyncio.create_task(
            _status(status, lambda: {"terms": etcd.terms, "owner": engine.owner}, stop)
        )
        await SagaWorker(engine, poll_interval=0.05, max_poll_interval=0.2, grace=0).run(stop)
        await engine.close()
    await watch
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
