"""A saga worker or outbox relay on a machine whose wall clock is wrong.

    python -m tests.consistency.skewed SKEW_SECONDS CONFIG_JSON

``time.time`` is moved by SKEW_SECONDS before multistore is imported, as a machine
whose clock is off by that much would see it (the monotonic clock is untouched).
CONFIG_JSON: ``{"url": log or outbox URL, "do": what, "lease": seconds}``:

- ``recover``: a saga engine with :data:`SAGAS` runs ``recover()``; prints the
  ``[saga id, state]`` it ran.
- ``start``: starts saga ``held`` with id ``CONFIG["saga_id"]``; the process SIGKILLs
  itself once the step's start is logged, leaving its lease as it wrote it.
- ``relay``: an outbox relay runs one batch; prints the events handed over
  (``aggregate:seq``).
- ``relay-die``: an outbox relay claims a batch and SIGKILLs itself in the handler.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

_skew = 0.0
if __name__ == "__main__":  # before multistore is imported
    _real_time = time.time
    _skew = float(sys.argv[1])
    time.time = lambda: _real_time() + _skew

from multistore.consistency import (  # noqa: E402
    Outbox,
    OutboxEvent,
    OutboxRelay,
    Saga,
    SagaEngine,
    Step,
    StepContext,
)
from multistore.stores import open_store  # noqa: E402
from multistore.stores.relational import RelationalStore  # noqa: E402


async def _quick(ctx: StepContext) -> str:
    return ctx.step


SAGAS = [
    Saga("quick", [Step("one", _quick), Step("two", _quick)], timeout=60.0),
    Saga("held", [Step("held", _quick)]),
]


def _die_at_start(event: str, saga_id: str, step: str | None) -> None:
    if event == "step_started":
        os.kill(os.getpid(), signal.SIGKILL)


async def main(config: dict[str, object]) -> None:
    store = await open_store(str(config["url"]), model="relational")
    assert isinstance(store, RelationalStore)
    lease = float(str(config.get("lease", 30.0)))
    do = config["do"]
    async with store:
        if do in ("recover", "start"):
            observer = _die_at_start if do == "start" else None
            async with SagaEngine(
                store, SAGAS, worker_id=f"skewed-{_skew:+.0f}", lease=lease, observer=observer
            ) as engine:
                if do == "start":
                    await engine.start(SAGAS[1], None, saga_id=str(config["saga_id"]))
                ran = [[r.saga_id, r.state.value] for r in await engine.recover()]
                print(json.dumps(ran), flush=True)
            return
        handed: list[str] = []

        async def handler(event: OutboxEvent) -> None:
            if do == "relay-die":
                os.kill(os.getpid(), signal.SIGKILL)
            handed.append(f"{event.aggregate}:{event.seq}")

        relay = OutboxRelay(Outbox(store), handler, lease=lease, worker_id=f"skewed-{_skew:+.0f}")
        await relay.run_once()
        print(json.dumps(handed), flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[2])))
