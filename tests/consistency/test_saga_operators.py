"""Operators on stuck sagas racing each other: ``retry_stuck`` and ``cancel_stuck``
from two operators (or an operator whose process stops between its two log writes).
A compensation logged as done never runs again, and a saga an operator's run left
half-taken can be retried or cancelled by another once that operator's lease ran out
(SQLite log, and every log backend for the take; the moments between the log calls
are held by a gate in the log)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from multistore.consistency._retry import RetryPolicy
from multistore.consistency._saga import Saga, SagaLeaseLostError, Step, StepContext
from multistore.consistency._saga_engine import SagaEngine
from multistore.consistency._saga_log import SagaLog
from multistore.core._saga import SagaRecord, SagaState
from multistore.errors import ConflictError, StoreUnavailableError
from tests.consistency.helpers import open_relational

LEASE = 30.0


class Clock:
    """One wall clock the operators share; the test moves it."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class GatedLog(SagaLog):
    """The real saga log, with a gate before one of its calls: the call waits there
    until the test opens it (or for ever, an operator whose process stopped)."""

    def __init__(self, engine: SagaEngine, before: str) -> None:
        super().__init__(engine.store, engine.time)
        self.before = before
        self.reached = asyncio.Event()
        self.open = asyncio.Event()

    async def _gate(self, call: str) -> None:
        if call == self.before:
            self.reached.set()
            await self.open.wait()

    async def take_stuck(self, saga_id: str, owner: str, *, lease: float, now: float) -> bool:
        await self._gate("take_stuck")
        return await super().take_stuck(saga_id, owner, lease=lease, now=now)

    async def save(
        self, before: SagaRecord, after: SagaRecord, *, owner: str, lease: float, now: float
    ) -> None:
        await self._gate("save")
        await super().save(before, after, owner=owner, lease=lease, now=now)


class Refunds:
    """Compensations that fail while their step is in ``broken``; counts the ones that
    ran through."""

    def __init__(self, *broken: str) -> None:
        self.broken = set(broken)
        self.done: list[str] = []

    async def __call__(self, ctx: StepContext) -> None:
        if ctx.step in self.broken:
            raise StoreUnavailableError(f"{ctx.step}: the provider is down")
        self.done.append(ctx.step)


def _saga(refunds: Refunds) -> Saga:
    async def ok(ctx: StepContext) -> str:
        return ctx.step

    async def fail(ctx: StepContext) -> None:
        raise RuntimeError("out of stock")

    once = RetryPolicy(max_attempts=1, retry_on=(Exception,))
    return Saga(
        "order",
        [
            Step("a", ok, compensate=refunds, compensation_retry=once),
            Step("b", ok, compensate=refunds, compensation_retry=once),
            Step("c", fail),
        ],
    )


@dataclass
class Stuck:
    """Saga ``o1``, stuck on b's compensation, and two operators' engines on its log."""

    refunds: Refunds
    clock: Clock
    op1: SagaEngine
    op2: SagaEngine

    def gate(self, engine: SagaEngine, before: str) -> GatedLog:
        gated = GatedLog(engine, before)
        engine.log = gated
        return gated


@contextlib.asynccontextmanager
async def _stuck(url: str) -> AsyncIterator[Stuck]:
    refunds = Refunds("a", "b")
    saga = _saga(refunds)
    clock = Clock()
    log1, log2 = await open_relational(url), await open_relational(url)
    async with (
        log1,
        log2,
        SagaEngine(log1, [saga], worker_id="op1", lease=LEASE, clock=clock) as op1,
        SagaEngine(log2, [saga], worker_id="op2", lease=LEASE, clock=clock) as op2,
    ):
        assert (await op1.start(saga, None, saga_id="o1")).state is SagaState.STUCK
        yield Stuck(refunds, clock, op1, op2)


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'log.db'}"


def test_a_retry_that_read_the_saga_before_another_retry_does_not_undo_its_work(
    tmp_path: Path,
) -> None:
    """Operator 2 reads the stuck saga; operator 1 retries it: b's compensation runs
    through, a's fails again (stuck on a). Operator 2's retry then goes on: it must
    start from the log as it is now, not write b back as not compensated and run b's
    compensation a second time."""

    async def body() -> None:
        async with _stuck(_sqlite(tmp_path)) as s:
            gated = s.gate(s.op2, "take_stuck")
            second = asyncio.create_task(s.op2.retry_stuck("o1"))
            await asyncio.wait_for(gated.reached.wait(), 30)
            s.refunds.broken.discard("b")
            assert (await s.op1.retry_stuck("o1")).state is SagaState.STUCK
            assert s.refunds.done == ["b"]
            gated.open.set()
            result = await asyncio.wait_for(second, 30)
            assert result.state is SagaState.STUCK  # a's refund still fails
            assert s.refunds.done == ["b"], "b's compensation ran again"
            shown = await s.op1.show("o1")
            assert [t["state"] for t in shown["steps"]] == ["completed", "compensated", "failed"]

    asyncio.run(body())


def test_a_cancel_that_read_the_saga_before_a_retry_reports_the_error_it_ends_on(
    tmp_path: Path,
) -> None:
    """Operator 2 reads the stuck saga to cancel it; operator 1's retry gets b through
    and sticks on a. The cancel then lands on the saga as it is: its message names a's
    error, the one the saga was stuck on when it was cancelled."""

    async def body() -> None:
        async with _stuck(_sqlite(tmp_path)) as s:
            gated = s.gate(s.op2, "take_stuck")
            cancel = asyncio.create_task(s.op2.cancel_stuck("o1", "by hand"))
            await asyncio.wait_for(gated.reached.wait(), 30)
            s.refunds.broken.discard("b")
            assert (await s.op1.retry_stuck("o1")).state is SagaState.STUCK
            gated.open.set()
            cancelled = await asyncio.wait_for(cancel, 30)
            assert cancelled.state is SagaState.CANCELLED
            assert cancelled.compensation_error is not None
            assert "a: the provider is down" in cancelled.compensation_error.message
            assert (await s.op1.result("o1")).compensation_error == cancelled.compensation_error
            assert s.refunds.done == ["b"]

    asyncio.run(body())


@pytest.mark.parametrize("operation", ["retry", "cancel"])
def test_an_operator_that_stopped_between_its_writes_does_not_lock_the_saga_for_ever(
    relational_url: str, operation: str
) -> None:
    """Operator 1 takes the stuck saga and stops before its next log write (its
    process died, or hangs). Once its lease ran out, operator 2 can cancel the saga;
    operator 1's late write is then refused by the fence. (Every log backend: the
    take compares the lease in SQL.)"""

    async def body() -> None:
        async with _stuck(relational_url) as s:
            gated = s.gate(s.op1, "save")
            call = s.op1.retry_stuck("o1") if operation == "retry" else s.op1.cancel_stuck("o1")
            hung = asyncio.create_task(call)
            await asyncio.wait_for(gated.reached.wait(), 30)
            with pytest.raises(ConflictError, match="taken by another"):
                await s.op2.cancel_stuck("o1", "too soon")  # op1's lease is live
            s.clock.now += LEASE + 1
            cancelled = await s.op2.cancel_stuck("o1", "operator 1 is gone")
            assert cancelled.state is SagaState.CANCELLED
            gated.open.set()
            with pytest.raises(SagaLeaseLostError):
                await asyncio.wait_for(hung, 30)
            assert (await s.op2.result("o1")).state is SagaState.CANCELLED
            assert s.refunds.done == []

    asyncio.run(body())


def test_a_cancel_interrupted_before_its_write_gives_the_saga_back(tmp_path: Path) -> None:
    """A cancel_stuck whose caller is cancelled after it took the saga (Ctrl-C, a
    closed console request) gives the saga back at once: another operator may act on
    it without waiting for the lease."""

    async def body() -> None:
        async with _stuck(_sqlite(tmp_path)) as s:
            gated = s.gate(s.op1, "save")
            cancel = asyncio.create_task(s.op1.cancel_stuck("o1", "first try"))
            await asyncio.wait_for(gated.reached.wait(), 30)
            cancel.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancel
            shown = await s.op2.show("o1")
            assert (shown["state"], shown["owner"]) == ("stuck", None)
            s.refunds.broken.clear()
            assert (await s.op2.retry_stuck("o1")).state is SagaState.COMPENSATED
            assert s.refunds.done == ["b", "a"]

    asyncio.run(body())
