"""Sagas on a real log: the seed's order saga, retries, timeouts, stuck sagas,
idempotent start and inspection (SQLite, and PostgreSQL where marked)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from multistore.consistency._retry import RetryPolicy
from multistore.consistency._saga import (
    Parallel,
    Saga,
    SagaLeaseLostError,
    SagaResult,
    Step,
    StepContext,
    StepTimeoutError,
)
from multistore.consistency._saga_engine import SagaEngine
from multistore.core._saga import SagaState
from multistore.errors import ConflictError, NotFoundError, StoreUnavailableError, UsageError
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore
from tests.consistency.saga_shop import Shop, order_input


async def _open(url: str) -> RelationalStore:
    store = await open_store(url, model="relational")
    assert isinstance(store, RelationalStore)
    return store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.server)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def urls(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """Four separate databases: the saga log, orders, payments, inventory."""
    names = ("log", "orders", "payments", "inventory")
    if backend == "sqlite":
        return {n: f"sqlite:///{tmp_path / n}.db" for n in names}
    server = request.getfixturevalue("postgres_server")
    if not server.is_running():
        server.start()
    return {n: server.create_database() for n in names}


class FakeTime:
    """A controlled clock: ``sleep`` records the wait and advances the clock."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


# -- the seed's order saga ------------------------------------------------------------


def test_order_saga_inventory_failure_refunds_payment_and_cancels_order(
    urls: dict[str, str],
) -> None:
    async def body() -> None:
        shop = await Shop.open(urls["orders"], urls["payments"], urls["inventory"])
        log = await _open(urls["log"])
        try:
            await shop.setup()
            saga = shop.saga()
            async with SagaEngine(log, [saga]) as engine:
                ok = await engine.start(saga, order_input(0), saga_id="order-ok")
                bad = await engine.start(saga, order_input(1), saga_id="order-bad")
                shown = await engine.show("order-bad")

            assert ok.state is SagaState.COMPLETED
            assert ok.outputs["charge_payment"] == {"payment": "order-ok:charge_payment"}
            assert bad.state is SagaState.COMPENSATED
            # the business error is kept after a successful compensation
            assert bad.error is not None
            assert bad.error.type == "InventoryError"
            assert "not enough 'rare'" in bad.error.message
            assert bad.compensation_error is None

            # the databases show it
            orders = {
                r["order_key"]: r["status"]
                for r in await shop.orders.fetch_all("SELECT order_key, status FROM orders")
            }
            assert orders == {
                "order-ok:create_order": "created",
                "order-bad:create_order": "cancelled",
            }
            payments = {
                r["payment_key"]: r["status"]
                for r in await shop.payments.fetch_all("SELECT payment_key, status FROM payments")
            }
            assert payments == {
                "order-ok:charge_payment": "charged",
                "order-bad:charge_payment": "refunded",
            }
            refunds = await shop.payments.fetch_all("SELECT payment_key, amount FROM refunds")
            assert [dict(r) for r in refunds] == [
                {"payment_key": "order-bad:charge_payment", "amount": 11}
            ]
            reserved = await shop.inventory.fetch_all("SELECT reservation_key FROM reservations")
            assert [r[0] for r in reserved] == ["order-ok:reserve_inventory"]
            assert await shop.inventory.fetch_val("SELECT qty FROM stock WHERE sku = 'rare'") == 0

            # the step history, as an operator sees it
            assert shown["state"] == "compensated"
            assert [(s["name"], s["state"]) for s in shown["steps"]] == [
                ("create_order", "compensated"),
                ("charge_payment", "compensated"),
                ("reserve_inventory", "failed"),
            ]
            assert json.loads(shown["steps"][2]["error"])["type"] == "InventoryError"
            assert json.loads(shown["input"]) == order_input(1)
        finally:
            await log.close()
            await shop.close()

    _run(body)


# -- helpers for small sagas ----------------------------------------------------------


def _engine(log: RelationalStore, saga: Saga, t: FakeTime, **kw: Any) -> SagaEngine:
    return SagaEngine(log, [saga], clock=t.clock, sleep=t.sleep, random=lambda: 0.5, **kw)


def _sqlite_log(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'log.db'}"


def test_retriable_errors_are_retried_with_capped_backoff_and_jitter(tmp_path: Path) -> None:
    calls: list[int] = []

    async def flaky(ctx: StepContext) -> str:
        calls.append(ctx.attempt)
        if len(calls) < 5:
            raise StoreUnavailableError("payments: connection refused")
        return "charged"

    policy = RetryPolicy(
        max_attempts=6, initial_delay=1.0, multiplier=2.0, max_delay=5.0, jitter=0.5
    )
    saga = Saga("pay", [Step("charge", flaky, retry=policy)])

    async def body() -> None:
        t = FakeTime()
        log = await _open(_sqlite_log(tmp_path))
        async with log, _engine(log, saga, t) as engine:
            result = await engine.start(saga, {"amount": 5}, saga_id="p1")
            shown = await engine.show("p1")
        assert result.state is SagaState.COMPLETED
        assert result.outputs == {"charge": "charged"}
        assert calls == [1, 2, 3, 4, 5]
        # 1, 2, 4, 8 capped at 5; random=0.5 with jitter 0.5 takes a quarter off
        assert t.sleeps == [0.75, 1.5, 3.0, 3.75]
        assert shown["steps"][0]["attempts"] == 5

    _run(body)


def test_business_errors_are_not_retried(tmp_path: Path) -> None:
    calls: list[int] = []

    async def declined(ctx: StepContext) -> None:
        calls.append(ctx.attempt)
        raise ValueError("card declined")

    saga = Saga("pay", [Step("charge", declined, retry=RetryPolicy(max_attempts=5))])

    async def body() -> None:
        t = FakeTime()
        log = await _open(_sqlite_log(tmp_path))
        async with log, _engine(log, saga, t) as engine:
            result = await engine.start(saga, None, saga_id="p1")
        assert result.state is SagaState.COMPENSATED
        assert result.error is not None and str(result.error) == "ValueError: card declined"
        assert calls == [1]
        assert t.sleeps == []

    _run(body)


def test_retries_stop_at_max_attempts_then_compensate(tmp_path: Path) -> None:
    undone: list[str] = []

    async def ok(ctx: StepContext) -> str:
        return "done"

    async def undo(ctx: StepContext) -> None:
        undone.append(ctx.idempotency_key)

    async def down(ctx: StepContext) -> None:
        raise StoreUnavailableError("inventory: connection refused")

    saga = Saga(
        "two",
        [
            Step("first", ok, compensate=undo),
            Step("second", down, retry=RetryPolicy(max_attempts=3, initial_delay=0.5, jitter=0)),
        ],
    )

    async def body() -> None:
        t = FakeTime()
        log = await _open(_sqlite_log(tmp_path))
        async with log, _engine(log, saga, t) as engine:
            result = await engine.start(saga, None, saga_id="x")
        assert result.state is SagaState.COMPENSATED
        assert result.error is not None and result.error.type == "StoreUnavailableError"
        assert t.sleeps == [0.5, 1.0]
        assert undone == ["x:first"]

    _run(body)


def test_half_done_step_is_compensated_with_its_idempotency_key(tmp_path: Path) -> None:
    """A step that failed after its effect (e.g. charged, then the reply was lost) is
    compensated too: its compensation was registered before it ran."""
    seen: list[tuple[str, object, str | None]] = []

    async def charge(ctx: StepContext) -> None:
        raise ValueError("charged, then the gateway answer was garbled")

    async def refund(ctx: StepContext) -> None:
        seen.append((ctx.idempotency_key, ctx.output, ctx.error.type if ctx.error else None))

    saga = Saga("pay", [Step("charge", charge, compensate=refund)])

    async def body() -> None:
        t = FakeTime()
        log = await _open(_sqlite_log(tmp_path))
        async with log, _engine(log, saga, t) as engine:
            result = await engine.start(saga, None, saga_id="p9")
        assert result.state is SagaState.COMPENSATED
        assert seen == [("p9:charge", None, "ValueError")]

    _run(body)


def test_compensations_run_in_reverse_order_with_outputs_replayed(tmp_path: Path) -> None:
    order: list[str] = []

    def step(name: str, fail: bool = False) -> Step:
        async def action(ctx: StepContext) -> dict[str, Any]:
            if fail:
                raise RuntimeError(f"{name} failed")
            return {"made": name, "saw": sorted(ctx.results)}

        async def compensate(ctx: StepContext) -> None:
            order.append(f"{ctx.step}:{ctx.output}")

        return Step(name, action, compensate=None if fail else compensate)

    saga = Saga("abc", [step("a"), step("b"), step("c"), step("d", fail=True)])

    async def body() -> None:
        t = FakeTime()
        log = await _open(_sqlite_log(tmp_path))
        async with log, _engine(log, saga, t) as engine:
            result = await engine.start(saga, None, saga_id="r")
        assert result.state is SagaState.COMPENSATED
        assert order == [
            "c:{'made': 'c', 'saw': ['a', 'b']}",
            "b:{'made': 'b', 'saw': ['a']}",
            "a:{'made': 'a', 'saw': []}",
        ]

    _run(body)


def test_compensation_failing_past_its_policy_leaves_saga_stuck_then_retry(
    tmp_path: Path,
) -> None:
    broken = {"on": True}
    refunds: list[str] = []

    async def charge(ctx: StepContext) -> str:
        return "ch_1"

    async def refund(ctx: StepContext) -> None:
        if broken["on"]:
            raise StoreUnavailableError("payments: connection refused")
        refunds.append(ctx.idempotency_key)

    async def reserve(ctx: StepContext) -> None:
        raise RuntimeError("out of stock")

    saga = Saga(
        "order",
        [
            Step(
                "charge",
                charge,
                compensate=refund,
                compensation_retry=RetryPolicy(
                    max_attempts=3, initial_delay=1, jitter=0, retry_on=(Exception,)
                ),
            ),
            Step("reserve", reserve),
        ],
    )

    async def body() -> None:
        t = FakeTime()
        log = await _open(_sqlite_log(tmp_path))
        async with log, _engine(log, saga, t) as engine:
            result = await engine.start(saga, None, saga_id="o1")
            assert result.state is SagaState.STUCK
            assert result.error is not None and str(result.error) == "RuntimeError: out of stock"
            assert result.compensation_error is not None
            assert result.compensation_error.type == "StoreUnavailableError"
            assert t.sleeps == [1.0, 2.0]
            stuck = await engine.list_stuck()
            assert [s["saga_id"] for s in stuck] == ["o1"]
            assert stuck[0]["owner"] is None
            shown = await engine.show("o1")
            assert shown["steps"][0]["compensation_attempts"] == 3
            # the stuck saga is not resumed by recovery; an operator retries it
            assert await engine.recover() == []
            broken["on"] = False
            retried = await engine.retry_stuck("o1")
            assert retried.state is SagaState.COMPENSATED
            assert retried.error is not None and retried.error.message == "out of stock"
            assert refunds == ["o1:charge"]
            assert await engine.list_stuck() == []
            with pytest.raises(ConflictError):
                await engine.retry_stuck("o1")

    _run(body)


def test_an_operator_cancels_a_stuck_saga(tmp_path: Path) -> None:
    """A stuck saga an operator gives up on ends cancelled: nothing runs it again (not
    recovery, not a retry), its steps stay as they were, and the reason is logged."""
    refunds: list[str] = []

    async def charge(ctx: StepContext) -> str:
        return "charged"

    async def refund(ctx: StepContext) -> None:
        refunds.append(ctx.saga_id)
        raise StoreUnavailableError("the payment provider is down")

    async def fail(ctx: StepContext) -> None:
        raise RuntimeError("out of stock")

    saga = Saga(
        "order",
        [
            Step(
                "charge",
                charge,
                compensate=refund,
                compensation_retry=RetryPolicy(max_attempts=1, retry_on=(Exception,)),
            ),
            Step("reserve", fail),
        ],
    )

    async def body() -> None:
        log = await _open(_sqlite_log(tmp_path))
        async with log, _engine(log, saga, FakeTime()) as engine:
            assert (await engine.start(saga, None, saga_id="o1")).state is SagaState.STUCK
            cancelled = await engine.cancel_stuck("o1", "refunded by hand,\n ticket 42")
            assert cancelled.state is SagaState.CANCELLED
            assert cancelled.compensation_error is not None
            assert cancelled.compensation_error.type == "SagaCancelled"
            assert cancelled.compensation_error.message.startswith(
                "cancelled by an operator: refunded by hand, ticket 42 (it was stuck on "
                "StoreUnavailableError: the payment provider is down)"
            )
            assert (await engine.result("o1")).state is SagaState.CANCELLED
            shown = await engine.show("o1")
            assert shown["owner"] is None
            assert [s["state"] for s in shown["steps"]] == ["completed", "failed"]
            assert await engine.list_stuck() == []
            assert [s["saga_id"] for s in await engine.list_sagas(state="cancelled")] == ["o1"]
            attempts = len(refunds)
            assert await engine.recover() == []
            with pytest.raises(ConflictError, match="cancelled, not stuck"):
                await engine.retry_stuck("o1")
            with pytest.raises(ConflictError, match="cancelled, not stuck"):
                await engine.cancel_stuck("o1")
            with pytest.raises(NotFoundError):
                await engine.cancel_stuck("nobody")
            assert len(refunds) == attempts  # nothing ran the refund again

    _run(body)


def test_step_timeout_is_retried_then_fails(tmp_path: Path) -> None:
    calls: list[int] = []

    async def slow(ctx: StepContext) -> None:
        calls.append(ctx.attempt)
        await asyncio.Event().wait()  # never returns; cut by the step timeout

    saga = Saga("slow", [Step("hang", slow, timeout=0.05, retry=RetryPolicy(max_attempts=2))])

    async def body() -> None:
        t = FakeTime()
        log = await _open(_sqlite_log(tmp_path))
        async with log, _engine(log, saga, t) as engine:
            result = await engine.start(saga, None, saga_id="t1")
        assert result.state is SagaState.COMPENSATED
        assert result.error is not None and result.error.type == StepTimeoutError.__name__
        assert calls == [1, 2]

    _run(body)


def test_a_steps_own_timeout_error_is_not_reported_as_its_timeout(tmp_path: Path) -> None:
    """A step with a timeout that raises TimeoutError itself (a client's timeout) fails
    with that error, not with "ran past its timeout"."""

    async def client_times_out(ctx: StepContext) -> None:
        raise TimeoutError("the payment API did not answer")

    once = RetryPolicy(max_attempts=1)
    saga = Saga("pay", [Step("pay", client_times_out, timeout=30, retry=once)])

    async def body() -> None:
        log = await _open(_sqlite_log(tmp_path))
        async with log, _engine(log, saga, FakeTime()) as engine:
            result = await engine.start(saga, None, saga_id="p1")
        assert result.state is SagaState.COMPENSATED
        assert result.error is not None
        assert (result.error.type, result.error.message) == (
            "TimeoutError",
            "the payment API did not answer",
        )

    _run(body)


def test_saga_deadline_stops_forward_steps_and_compensates(tmp_path: Path) -> None:
    ran: list[str] = []
    t = FakeTime()

    async def slow_first(ctx: StepContext) -> None:
        ran.append(ctx.step)
        t.now += 100  # the step took 100 s (controlled clock)

    async def undo(ctx: StepContext) -> None:
        ran.append("undo " + ctx.step)

    async def second(ctx: StepContext) -> None:
        ran.append(ctx.step)

    saga = Saga(
        "deadline",
        [Step("first", slow_first, compensate=undo), Step("second", second)],
        timeout=60,
    )

    async def body() -> None:
        log = await _open(_sqlite_log(tmp_path))
        async with log, _engine(log, saga, t) as engine:
            result = await engine.start(saga, None, saga_id="d1")
        assert result.state is SagaState.COMPENSATED
        assert result.error is not None and result.error.type == "SagaTimeoutError"
        assert ran == ["first", "undo first"]

    _run(body)


def test_start_is_idempotent_by_saga_id(tmp_path: Path) -> None:
    runs: list[str] = []

    async def act(ctx: StepContext) -> dict[str, Any]:
        runs.append(ctx.saga_id)
        return {"n": len(runs)}

    saga = Saga("once", [Step("act", act)])

    async def body() -> None:
        t = FakeTime()
        log = await _open(_sqlite_log(tmp_path))
        async with log, _engine(log, saga, t) as engine:
            first = await engine.start(saga, {"a": 1, "b": [1, 2]}, saga_id="same")
            again = await engine.start(saga, {"b": [1, 2], "a": 1}, saga_id="same")
            assert again == first
            assert first.outputs == {"act": {"n": 1}}
            assert runs == ["same"]
            with pytest.raises(ConflictError, match="another input"):
                await engine.start(saga, {"a": 2}, saga_id="same")
            # concurrent starts of one id: one run
            both = await asyncio.gather(
                engine.start(saga, None, saga_id="twin"), engine.start(saga, None, saga_id="twin")
            )
            assert runs.count("twin") == 1
            assert {r.state for r in both} <= {SagaState.COMPLETED, SagaState.RUNNING}
            assert (await engine.result("twin")).state is SagaState.COMPLETED

    _run(body)


def test_inspect_lists_by_state_and_shows_history(tmp_path: Path) -> None:
    async def ok(ctx: StepContext) -> int:
        return 1

    async def boom(ctx: StepContext) -> int:
        raise RuntimeError("boom")

    good = Saga("good", [Step("s1", ok), Step("s2", ok)])
    bad = Saga("bad", [Step("s1", ok), Step("s2", boom)])

    async def body() -> None:
        t = FakeTime()
        log = await _open(_sqlite_log(tmp_path))
        async with log, SagaEngine(log, [good, bad], clock=t.clock, sleep=t.sleep) as engine:
            for i in range(3):
                await engine.start(good, i, saga_id=f"g{i}")
                t.now += 1
            await engine.start(bad, None, saga_id="b0")
            pending = await engine.enqueue(good, 9, saga_id="later")
            assert pending == "later"
            done = await engine.list_sagas(state="completed")
            assert [s["saga_id"] for s in done] == ["g2", "g1", "g0"]
            assert [s["saga_id"] for s in await engine.list_sagas(state="compensated")] == ["b0"]
            assert [s["saga_id"] for s in await engine.list_sagas(state="pending")] == ["later"]
            assert len(await engine.list_sagas()) == 5
            json.dumps(await engine.list_sagas())  # plain JSON for `multistore sagas --json`
            shown = await engine.show("b0")
            assert [(s["name"], s["state"], s["attempts"]) for s in shown["steps"]] == [
                ("s1", "completed", 1),
                ("s2", "failed", 1),
            ]
            json.dumps(shown)
            with pytest.raises(NotFoundError):
                await engine.show("nope")
            with pytest.raises(ValueError, match="not-a-state"):
                await engine.list_sagas(state="not-a-state")
            # the pending saga runs on recovery
            recovered = await engine.recover()
            assert [r.saga_id for r in recovered] == ["later"]
            assert recovered[0].outputs == {"s1": 1, "s2": 1}

    _run(body)


def test_bad_definitions_and_inputs_are_refused(tmp_path: Path) -> None:
    async def ok(ctx: StepContext) -> object:
        return object()  # not JSON

    with pytest.raises(UsageError):
        Saga("x", [])
    with pytest.raises(UsageError):
        Saga("x", [Step("a", ok), Step("a", ok)])
    with pytest.raises(UsageError):
        Step("a:b", ok)
    with pytest.raises(UsageError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(UsageError):
        Parallel("g", [])
    with pytest.raises(UsageError, match="same name"):
        Saga("x", [Step("a", ok), Parallel("g", [Step("b", ok), Step("a", ok)])])
    with pytest.raises(UsageError, match="neither a Step"):
        Saga("x", [ok])  # type: ignore[list-item]

    saga = Saga("x", [Step("a", ok)])

    async def body() -> None:
        log = await _open(_sqlite_log(tmp_path))
        async with log, SagaEngine(log, [saga]) as engine:
            with pytest.raises(UsageError, match="must be JSON"):
                await engine.start(saga, {"when": object()}, saga_id="x1")
            assert await engine.list_sagas() == []
            # an action returning something that is not JSON fails the step (no retry)
            result: SagaResult = await engine.start(saga, None, saga_id="x2")
            assert result.state is SagaState.COMPENSATED
            assert result.error is not None and "must be JSON" in result.error.message

    _run(body)


# -- parallel groups ----------------------------------------------------------------


class _Meeting:
    """Each caller waits until ``parties`` callers are inside at once: only
    concurrent members get past it; a sequential one times out (bounded) and the
    timeout is counted, so a retry that gets through later cannot hide it."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.inside = 0
        self.timeouts = 0
        self.everyone = asyncio.Event()

    async def __call__(self) -> None:
        self.inside += 1
        if self.inside == self.parties:
            self.everyone.set()
        try:
            await asyncio.wait_for(self.everyone.wait(), 10.0)
        except TimeoutError:
            self.timeouts += 1
            raise


def test_parallel_group_runs_its_members_concurrently(urls: dict[str, str]) -> None:
    meet = _Meeting(2)

    async def first(ctx: StepContext) -> str:
        return "order-1"

    async def member(ctx: StepContext) -> dict[str, Any]:
        await meet()
        return {"step": ctx.step, "saw": sorted(ctx.results)}

    async def last(ctx: StepContext) -> list[str]:
        return sorted(ctx.results)

    saga = Saga(
        "fan_out",
        [
            Step("first", first),
            Parallel("pay_and_reserve", [Step("pay", member), Step("reserve", member)]),
            Step("last", last),
        ],
    )

    async def body() -> None:
        log = await _open(urls["log"])
        async with log, SagaEngine(log, [saga]) as engine:
            result = await engine.start(saga, None, saga_id="f1")
            shown = await engine.show("f1")
        assert result.state is SagaState.COMPLETED, result.error
        assert meet.timeouts == 0
        # members see the steps before their group, never each other
        assert result.outputs["pay"] == {"step": "pay", "saw": ["first"]}
        assert result.outputs["reserve"] == {"step": "reserve", "saw": ["first"]}
        assert result.outputs["last"] == ["first", "pay", "reserve"]
        assert [(s["name"], s["state"], s["attempts"]) for s in shown["steps"]] == [
            ("first", "completed", 1),
            ("pay", "completed", 1),
            ("reserve", "completed", 1),
            ("last", "completed", 1),
        ]

    _run(body)


def test_failed_member_compensates_its_group_together_then_earlier_steps(
    tmp_path: Path,
) -> None:
    undone: list[str] = []
    meet = _Meeting(2)

    async def ok(ctx: StepContext) -> str:
        return ctx.step

    async def declined(ctx: StepContext) -> str:
        raise ValueError(f"{ctx.step} declined")

    async def undo(ctx: StepContext) -> None:
        if ctx.step in ("pay", "reserve"):
            await meet()  # the group's compensations run concurrently
        undone.append(f"{ctx.step}:{ctx.idempotency_key}")

    saga = Saga(
        "order",
        [
            Step("create", ok, compensate=undo),
            Parallel(
                "group",
                [
                    Step("pay", ok, compensate=undo),
                    Step("reserve", declined, compensate=undo),
                    Step("gift", declined),  # no compensation: nothing to undo
                ],
            ),
            Step("ship", ok, compensate=undo),
        ],
    )

    async def body() -> None:
        log = await _open(_sqlite_log(tmp_path))
        async with log, SagaEngine(log, [saga]) as engine:
            result = await engine.start(saga, None, saga_id="o1")
            shown = await engine.show("o1")
        assert result.state is SagaState.COMPENSATED
        assert meet.timeouts == 0
        # the first failed member in list order is the saga's error
        assert result.error is not None and result.error.message == "reserve declined"
        assert sorted(undone[:2]) == ["pay:o1:pay", "reserve:o1:reserve"]
        assert undone[2:] == ["create:o1:create"]  # after the whole group
        assert [(s["name"], s["state"]) for s in shown["steps"]] == [
            ("create", "compensated"),
            ("pay", "compensated"),
            ("reserve", "compensated"),
            ("gift", "failed"),
            ("ship", "pending"),
        ]

    _run(body)


def test_group_member_retries_alone_and_a_stuck_member_is_retried_by_an_operator(
    tmp_path: Path,
) -> None:
    runs: list[str] = []
    broken = {"refund": True}

    async def flaky(ctx: StepContext) -> str:
        runs.append(ctx.step)
        if runs.count(ctx.step) < 3:
            raise StoreUnavailableError("payments: connection refused")
        return "charged"

    async def steady(ctx: StepContext) -> str:
        runs.append(ctx.step)
        return "reserved"

    async def fail(ctx: StepContext) -> str:
        raise ValueError("no courier")

    async def refund(ctx: StepContext) -> None:
        if broken["refund"]:
            raise StoreUnavailableError("payments: connection refused")

    async def release(ctx: StepContext) -> None:
        runs.append("release")

    retry = RetryPolicy(max_attempts=3, initial_delay=1, jitter=0, retry_on=(Exception,))
    saga = Saga(
        "order",
        [
            Parallel(
                "group",
                [
                    Step("pay", flaky, compensate=refund, compensation_retry=retry),
                    Step("reserve", steady, compensate=release),
                ],
            ),
            Step("ship", fail),
        ],
    )

    async def body() -> None:
        t = FakeTime()
        log = await _open(_sqlite_log(tmp_path))
        async with log, _engine(log, saga, t) as engine:
            result = await engine.start(saga, None, saga_id="o2")
            assert result.state is SagaState.STUCK
            assert runs.count("pay") == 3 and runs.count("reserve") == 1  # retried alone
            assert runs.count("release") == 1
            assert result.compensation_error is not None
            assert result.compensation_error.type == "StoreUnavailableError"
            shown = await engine.show("o2")
            steps = {s["name"]: s for s in shown["steps"]}
            assert steps["pay"]["attempts"] == 3 and steps["reserve"]["attempts"] == 1
            assert steps["pay"]["compensation_attempts"] == 3
            assert steps["reserve"]["state"] == "compensated"
            broken["refund"] = False
            retried = await engine.retry_stuck("o2")
            assert retried.state is SagaState.COMPENSATED
            assert retried.error is not None and retried.error.message == "no courier"
            assert runs.count("release") == 1  # the compensated member is not undone twice

    _run(body)


def test_a_worker_whose_lease_was_taken_over_cannot_write(urls: dict[str, str]) -> None:
    """The fence: every log write checks the owner, so a worker that lost its lease
    (another worker took the saga) stops instead of running it alongside."""
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(ctx: StepContext) -> str:
        started.set()
        await release.wait()
        return "late"

    async def never(ctx: StepContext) -> str:
        raise AssertionError("the next step must not run")

    saga = Saga("fenced", [Step("slow", slow), Step("next", never)])

    async def body() -> None:
        log = await _open(urls["log"])
        async with log, SagaEngine(log, [saga], worker_id="a") as engine:
            running = asyncio.create_task(engine.start(saga, None, saga_id="f1"))
            await asyncio.wait_for(started.wait(), 10)
            # another worker takes the saga over (as after an expired lease)
            await log.execute("UPDATE multistore_sagas SET owner = 'b' WHERE saga_id = 'f1'")
            release.set()
            with pytest.raises(SagaLeaseLostError):
                await running
            shown = await engine.show("f1")
        assert shown["owner"] == "b"
        assert [(s["name"], s["state"]) for s in shown["steps"]] == [
            ("slow", "started"),
            ("next", "pending"),
        ]

    _run(body)


def test_close_stops_a_heartbeat_that_lost_its_cancellation(tmp_path: Path) -> None:
    """On Python 3.11 ``asyncio.wait_for`` (inside drivers' calls) can swallow a cancel
    that comes just as the call finishes. A lease renewal that loses the cancel of
    ``close()`` must not keep the heartbeat, and so ``close()``, going forever."""

    async def body() -> None:
        log = await _open(_sqlite_log(tmp_path))
        async with log:
            engine = SagaEngine(log, lease=0.3)
            await engine.setup()
            renew = engine.log.renew
            in_renewal = asyncio.Event()
            lost: list[BaseException] = []

            async def losing_the_cancel(*args: Any, **kwargs: Any) -> Any:
                if not lost:
                    in_renewal.set()
                    try:
                        await asyncio.Event().wait()  # until close() cancels the beat
                    except asyncio.CancelledError as exc:
                        lost.append(exc)  # dropped, as that wait_for drops it
                return await renew(*args, **kwargs)

            engine.log.renew = losing_the_cancel  # type: ignore[method-assign]
            engine._running.add("s1")
            engine._ensure_heartbeat()
            async with asyncio.timeout(30):
                await in_renewal.wait()
            closing = asyncio.ensure_future(engine.close())
            await asyncio.wait({closing}, timeout=10)  # a bound on a hang, not a speed check
            if not closing.done():
                closing.cancel()
                pytest.fail("close() waits for a heartbeat that lost its cancel")
            await closing
            assert len(lost) == 1
            assert asyncio.all_tasks() == {asyncio.current_task()}  # the heartbeat ended

    _run(body)
