"""A cancellation that comes as a wait for a connection is granted is not lost.

On Python 3.11 ``asyncio.wait_for`` returns the awaited result instead of raising when
its caller is cancelled in the same turn of the event loop as the awaited call
completes. Waits for a connection (the SQLite participant's lock at ``begin``, a
MariaDB pool with every session lent out) must let that cancel through: a caller
that was cancelled (a stop, a request's timeout) must not go on holding the SQLite
write lock or running its statement. The holder hands the connection back and the
waiter is cancelled in one turn, as a timer or a stop does it.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from multistore.consistency import Saga, SagaEngine, Step, StepContext, open_participant
from multistore.consistency._tpc_sqlite import SQLiteParticipant
from multistore.core._tpc import Xid
from multistore.stores._registry import open_store
from multistore.stores.relational import RelationalStore


async def _turns() -> None:
    """Let a task just created reach its wait for the connection (scheduler turns,
    no time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def _cancelled_as_granted(store: RelationalStore, waiter: Any) -> asyncio.Task[Any]:
    """Start ``waiter`` while this task holds ``store``'s connection, then hand the
    connection back and cancel ``waiter`` in the same turn."""
    async with store.connection():
        task = asyncio.ensure_future(waiter)
        await _turns()
        assert not task.done()
    task.cancel()  # no await since the release: the grant and the cancel in one turn
    await asyncio.wait({task}, timeout=30)
    assert task.done()
    return task


def test_a_sqlite_begin_cancelled_as_the_lock_is_granted_raises(tmp_path: Path) -> None:
    async def body() -> None:
        participant = await open_participant("a", f"sqlite:///{tmp_path / 'a.db'}")
        assert isinstance(participant, SQLiteParticipant)
        try:
            xid = Xid("n1", uuid.uuid4().hex).for_branch("a")
            task = await _cancelled_as_granted(participant.store, participant.begin(xid))
            if not task.cancelled():
                await task.result().release()
                pytest.fail("begin() returned a branch to a caller that was cancelled")
            # nothing holds the file: another transaction gets it
            assert await participant.store.fetch_val("SELECT 1") == 1
        finally:
            await participant.close()

    asyncio.run(body())


@pytest.mark.server
def test_a_mariadb_query_cancelled_as_a_session_is_handed_back_raises(mariadb_url: str) -> None:
    async def body() -> None:
        store = await open_store(f"{mariadb_url}?pool_max=1", model="relational")
        assert isinstance(store, RelationalStore)
        try:
            ran = store.fetch_val("SELECT 1")
            task = await _cancelled_as_granted(store, ran)
            assert task.cancelled(), "the query ran for a caller that was cancelled"
            assert await store.fetch_val("SELECT 2") == 2  # the one session is free
        finally:
            await store.close()

    asyncio.run(body())


def test_a_saga_cancelled_as_its_step_returns_runs_no_further_step(tmp_path: Path) -> None:
    """A saga run (a worker's stop, a caller's timeout) cancelled in the turn its step
    with a timeout returns: the next step must not run."""
    ran: list[str] = []
    entered = asyncio.Event()

    async def first(ctx: StepContext) -> str:
        ran.append(ctx.step)
        entered.set()
        return await gate

    async def second(ctx: StepContext) -> str:
        ran.append(ctx.step)
        return "ran"

    saga = Saga("two", [Step("first", first, timeout=30), Step("second", second)])
    gate: asyncio.Future[str]

    async def body() -> None:
        nonlocal gate
        gate = asyncio.get_running_loop().create_future()
        log = await open_store(f"sqlite:///{tmp_path / 'log.db'}", model="relational")
        assert isinstance(log, RelationalStore)
        async with log, SagaEngine(log, [saga], worker_id="w") as engine:
            task = asyncio.ensure_future(engine.start(saga, None, saga_id="s1"))
            await asyncio.wait_for(entered.wait(), 30)
            gate.set_result("done")
            task.cancel()  # in the turn the step returns
            await asyncio.wait({task}, timeout=30)
            assert task.cancelled(), "the saga went on after it was cancelled"
            assert ran == ["first"]
            (row,) = await engine.list_sagas()
            assert (row["state"], row["owner"]) == ("running", None)  # given back

    asyncio.run(body())
