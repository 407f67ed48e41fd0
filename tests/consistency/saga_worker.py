"""A saga worker process for the crash and multi-worker tests.

    python -m tests.consistency.saga_worker CONFIG_JSON

CONFIG_JSON: ``{"log": url, "orders": url, "payments": url, "inventory": url,
"executions": url | null, "worker": id, "mode": "start" | "recover" | "work",
"count": n, "lease": seconds, "parallel": bool}`` (``parallel``: the saga with the
payment and the reservation as one concurrent group).

- ``start``: run sagas ``s0 .. s{n-1}`` one after another with ``engine.start``.
- ``recover``: ``engine.recover()``, then start every saga again (idempotent start:
  finished ones return their result, never-started ones run now).
- ``work``: ``engine.recover()`` until nothing is left to claim (pending sagas were
  enqueued by the test).

``SAGA_CRASH_AT=<event>:<step>:<saga id>`` SIGKILLs the process at that point:
``step_starting`` (before the step's start is logged), ``step_completed`` (after
its output is logged), ``compensation_starting``, or (in saga_shop) ``effect`` /
``undo`` right after a step's or compensation's effect committed, before its log
record. The process prints one JSON line per finished saga.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from multistore.consistency._saga_engine import SagaEngine
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore
from tests.consistency.saga_shop import Shop, order_input

ROOT = Path(__file__).resolve().parents[2]


def spawn(config: dict[str, object], crash_at: str | None = None, timeout: float = 60) -> int:
    """Run this worker in a process (SIGKILLed at ``crash_at``, if given) until it
    ends; its exit code: 0, or -9 when it was killed. Anything else fails the test."""
    env = dict(os.environ)
    env.pop("SAGA_CRASH_AT", None)
    if crash_at is not None:
        env["SAGA_CRASH_AT"] = crash_at
    done = subprocess.run(
        [sys.executable, "-m", "tests.consistency.saga_worker", json.dumps(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode not in (0, -9):
        raise AssertionError(f"worker failed ({done.returncode}):\n{done.stderr}")
    return done.returncode


def _observer(event: str, saga_id: str, step: str | None) -> None:
    if os.environ.get("SAGA_CRASH_AT") == f"{event}:{step}:{saga_id}":
        os.kill(os.getpid(), signal.SIGKILL)


async def main(config: dict[str, object]) -> None:
    shop = await Shop.open(
        str(config["orders"]),
        str(config["payments"]),
        str(config["inventory"]),
        executions=None if config.get("executions") is None else str(config["executions"]),
    )
    shop.worker = str(config["worker"])
    log = await open_store(str(config["log"]), model="relational")
    assert isinstance(log, RelationalStore)
    mode = config["mode"]
    count = int(str(config.get("count", 0)))
    try:
        if mode == "start":
            await shop.setup()
        saga = shop.saga(parallel=bool(config.get("parallel", False)))
        async with SagaEngine(
            log,
            [saga],
            worker_id=str(config["worker"]),
            lease=float(str(config.get("lease", 30.0))),
            observer=_observer,
        ) as engine:
            results = []
            if mode in ("recover", "work"):
                results.extend(await engine.recover())
            if mode in ("start", "recover"):
                for i in range(count):
                    results.append(await engine.start(saga, order_input(i), saga_id=f"s{i}"))
            for r in results:
                print(json.dumps({"saga_id": r.saga_id, "state": r.state.value}), flush=True)
    finally:
        await log.close()
        await shop.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
