"""Stopping background work for sure when a cancellation is lost (Python 3.11's
``asyncio.wait_for``, inside drivers' calls, can swallow one that comes as the call
finishes): the outbox relay's heartbeat when the relay is cancelled again while it
stops it, and the sagas a :class:`SagaWorker` cancels at its stop (SQLite)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from multistore.consistency import (
    Outbox,
    OutboxEvent,
    OutboxRelay,
    Saga,
    SagaEngine,
    SagaWorker,
    Step,
    StepContext,
)
from tests.consistency.helpers import open_relational, wait_for


async def _only_this_task_left(what: str) -> None:
    """Until every other task of the loop has ended (a bound on a hang, not a speed
    check)."""

    async def alone() -> bool:
        return asyncio.all_tasks() == {asyncio.current_task()}

    await wait_for(alone, what, within=20)


def test_a_relay_cancelled_again_while_it_stops_its_heartbeat_leaves_none_running(
    tmp_path: Path,
) -> None:
    """The relay is cancelled inside the handler; its heartbeat loses the cancel of
    the batch's stop; the relay's caller cancels it again during that stop. The
    heartbeat must still end: left running it renews the batch's leases for ever, and
    no other relay ever delivers those events."""

    async def body() -> None:
        store = await open_relational(f"sqlite:///{tmp_path / 'shop.db'}")
        async with store:
            outbox = Outbox(store)
            await outbox.setup()
            async with store.transaction() as tx:
                await outbox.add(tx, "p1", "product.upserted", {"id": "p1"})
            entered = asyncio.Event()

            async def hangs(event: OutboxEvent) -> None:
                entered.set()
                await asyncio.Event().wait()

            relay = OutboxRelay(outbox, hangs, lease=0.3)
            renew = relay._leases.renew
            in_renewal, swallowed = asyncio.Event(), asyncio.Event()

            async def losing_the_cancel(*args: Any, **kwargs: Any) -> int:
                if not swallowed.is_set():
                    in_renewal.set()
                    try:
                        await asyncio.Event().wait()  # until the batch's stop cancels it
                    except asyncio.CancelledError:
                        swallowed.set()  # dropped, as that wait_for drops it
                return await renew(*args, **kwargs)

            relay._leases.renew = losing_the_cancel  # type: ignore[method-assign]
            running = asyncio.create_task(relay.run_once())
            await asyncio.wait_for(entered.wait(), 30)
            await asyncio.wait_for(in_renewal.wait(), 30)
            running.cancel()  # the relay stops; its heartbeat loses the cancel
            await asyncio.wait_for(swallowed.wait(), 30)
            running.cancel()  # and the relay's caller cancels again during the stop
            await asyncio.wait({running}, timeout=30)
            assert running.cancelled()
            await _only_this_task_left("the relay's heartbeat ended")

    asyncio.run(body())


def test_a_worker_stop_ends_a_saga_that_lost_its_cancellation(tmp_path: Path) -> None:
    """A stop past its grace cancels the running sagas. One whose step lost that
    cancel (and waits on) is cancelled again, and the stop returns; before, the
    worker awaited it with no bound and the stop never returned."""
    entered = asyncio.Event()
    swallowed: list[str] = []

    async def loses_the_cancel(ctx: StepContext) -> str:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.append(ctx.saga_id)  # dropped, as that wait_for drops it
        await asyncio.Event().wait()  # a step that goes on waiting
        return "never"

    saga = Saga("hang", [Step("hang", loses_the_cancel)])

    async def body() -> None:
        log = await open_relational(f"sqlite:///{tmp_path / 'log.db'}")
        async with log, SagaEngine(log, [saga], worker_id="w", lease=0.6) as engine:
            await engine.enqueue(saga, None, saga_id="s1")
            worker = SagaWorker(engine, poll_interval=0.01, max_poll_interval=0.05, grace=0)
            stop = asyncio.Event()
            running = asyncio.create_task(worker.run(stop))
            await asyncio.wait_for(entered.wait(), 30)
            stop.set()
            await asyncio.wait({running}, timeout=30)  # a bound on a hang
            assert running.done(), "the worker's stop waits for a saga that lost its cancel"
            await running
            assert swallowed == ["s1"]
            assert worker.statistics().given_up == 1
            (row,) = await engine.list_sagas()
            assert (row["state"], row["owner"]) == ("running", None)  # given back

    asyncio.run(body())
