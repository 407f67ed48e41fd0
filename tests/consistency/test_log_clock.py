"""Leases and deadlines on the database's clock: a saga worker or an outbox relay
whose machine's wall clock is an hour off (a real process, ``time.time`` moved before
multistore is imported) neither takes a live lease, nor keeps one past its length,
nor runs a saga past or short of its deadline, nor retries an event before it is due.

PostgreSQL and MariaDB only: an SQLite file has no clock of its own, and every
process that opens it runs on the one machine whose clock it uses."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from multistore.consistency import (
    Outbox,
    OutboxEvent,
    OutboxRelay,
    RetryPolicy,
    Saga,
    SagaEngine,
    SagaResult,
    Step,
    StepContext,
)
from multistore.core import SagaState
from tests.consistency.helpers import open_relational, wait_for

ROOT = Path(__file__).resolve().parents[2]
HOUR = 3600.0


@pytest.fixture(
    params=[
        pytest.param("postgres_url", marks=pytest.mark.server),
        pytest.param("mariadb_url", marks=pytest.mark.server),
    ]
)
def server_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(request.param))


def skewed(skew: float, config: dict[str, Any]) -> Any:
    """Run ``tests/consistency/skewed.py`` with its clock ``skew`` seconds off; what it
    printed (JSON), or None when it killed itself as asked."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.consistency.skewed", str(skew), json.dumps(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode == -9:
        return None
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


async def _quick(ctx: StepContext) -> str:
    return ctx.step


def test_a_saga_worker_with_a_wrong_clock_keeps_to_the_databases_leases(
    server_url: str,
) -> None:
    entered, gate = asyncio.Event(), asyncio.Event()

    async def held(ctx: StepContext) -> str:
        entered.set()
        await gate.wait()
        return "held"

    definitions = [
        Saga("quick", [Step("one", _quick), Step("two", _quick)], timeout=60.0),
        Saga("held", [Step("held", held)]),
    ]

    async def body() -> None:
        log = await open_relational(server_url)
        async with log, SagaEngine(log, definitions, worker_id="honest") as honest:
            # a run with a 60 s deadline, enqueued by this (correct) machine
            await honest.enqueue(definitions[0], None, saga_id="q1")
            running = asyncio.create_task(honest.start(definitions[1], None, saga_id="h1"))
            await asyncio.wait_for(entered.wait(), 30)
            # an hour fast: the live lease on h1 is not expired for it, and q1's
            # deadline has not passed
            assert await asyncio.to_thread(skewed, HOUR, {"url": server_url, "do": "recover"}) == [
                ["q1", "completed"]
            ]
            gate.set()
            assert (await running).state is SagaState.COMPLETED

            # an hour slow, and killed while it runs a saga: its lease still runs the
            # full 30 s for everyone else
            config = {"url": server_url, "do": "start", "saga_id": "slow-1", "lease": 30.0}
            assert await asyncio.to_thread(skewed, -HOUR, config) is None
            assert await honest.recover() == []

            # an hour fast, killed: its 1 s lease runs out after 1 s, not after an hour
            config = {"url": server_url, "do": "start", "saga_id": "fast-1", "lease": 1.0}
            assert await asyncio.to_thread(skewed, HOUR, config) is None
            taken: list[SagaResult] = []

            async def taken_over() -> bool:
                taken.extend(await honest.recover())
                return bool(taken)

            await wait_for(taken_over, "the dead fast worker's saga was taken over")
            assert [(r.saga_id, r.state) for r in taken] == [("fast-1", SagaState.COMPLETED)]

    asyncio.run(body())


def test_an_outbox_relay_with_a_wrong_clock_keeps_to_the_databases_leases(
    server_url: str,
) -> None:
    async def body() -> None:
        store = await open_relational(server_url)
        async with store:
            outbox = Outbox(store)
            await outbox.setup()
            for aggregate in ("a", "b", "c"):
                async with store.transaction() as tx:
                    await outbox.add(tx, aggregate, "changed", {})
            entered, gate = asyncio.Event(), asyncio.Event()
            handed: list[str] = []

            async def slow(event: OutboxEvent) -> None:
                handed.append(f"{event.aggregate}:{event.seq}")
                entered.set()
                await gate.wait()

            relay = OutboxRelay(outbox, slow, batch=1, worker_id="honest")
            running = asyncio.create_task(relay.run_once())  # takes a:1, the oldest
            await asyncio.wait_for(entered.wait(), 30)
            # an hour fast: a:1's lease is live; it may take b:1 and c:1, not a:1
            fast = await asyncio.to_thread(skewed, HOUR, {"url": server_url, "do": "relay"})
            assert "a:1" not in fast
            gate.set()
            assert await running == 1

            # a failure due again in 30 s is not due for a relay an hour fast
            async with store.transaction() as tx:
                await outbox.add(tx, "d", "changed", {})

            async def fails(event: OutboxEvent) -> None:
                raise ConnectionError("index down")

            retry = RetryPolicy(
                max_attempts=5, initial_delay=30.0, jitter=0.0, retry_on=(Exception,)
            )
            assert await OutboxRelay(outbox, fails, retry=retry, worker_id="honest").run_once() == 0
            assert await asyncio.to_thread(skewed, HOUR, {"url": server_url, "do": "relay"}) == []

            # an hour fast, killed holding e:1: its 1 s lease runs out after 1 s
            async with store.transaction() as tx:
                await outbox.add(tx, "e", "changed", {})
            config = {"url": server_url, "do": "relay-die", "lease": 1.0}
            assert await asyncio.to_thread(skewed, HOUR, config) is None
            late: list[str] = []

            async def record(event: OutboxEvent) -> None:
                late.append(f"{event.aggregate}:{event.seq}")

            after = OutboxRelay(outbox, record, worker_id="honest-2")

            async def delivered() -> bool:
                await after.run_once()
                return "e:1" in late

            await wait_for(delivered, "the dead fast relay's event was taken over")
            assert "d:1" not in late  # still waiting for its retry time

    asyncio.run(body())
