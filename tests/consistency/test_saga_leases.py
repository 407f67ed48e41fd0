"""Leases and definitions of saga runs: a worker renews exactly the sagas it runs, a
cancelled start gives its saga back, one saga that cannot run never stops the others,
and versions of a definition finish the runs they started (SQLite, PostgreSQL and
MariaDB logs)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from multistore.consistency._saga import Saga, SagaResult, Step, StepContext
from multistore.consistency._saga_engine import SagaEngine
from multistore.core._saga import SagaState
from multistore.stores.relational import RelationalStore
from tests.consistency.helpers import open_relational, wait_for
from tests.consistency.saga_shop import Shop
from tests.consistency.saga_worker import spawn

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def log_url(relational_url: str) -> str:
    return relational_url


async def _row(log: RelationalStore, saga_id: str) -> dict[str, Any]:
    row = await log.fetch_one("SELECT * FROM multistore_sagas WHERE saga_id = :id", {"id": saga_id})
    assert row is not None
    return dict(row)


async def _noop(ctx: StepContext) -> str:
    return ctx.step


class Gate:
    """A step that waits until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.open = asyncio.Event()
        self.runs: list[str] = []

    async def __call__(self, ctx: StepContext) -> str:
        self.runs.append(ctx.saga_id)
        self.entered.set()
        await self.open.wait()
        return "through"


# -- a worker renews exactly the sagas it runs ---------------------------------------


def test_heartbeat_renews_only_the_sagas_running_here(log_url: str, tmp_path: Path) -> None:
    """A worker restarted under the id of one that was killed mid-saga, and that runs
    other sagas before (or without) recovering: its heartbeat must not keep the dead
    run's lease alive, so that another worker takes that saga over once it expires."""
    shop_urls = {n: f"sqlite:///{tmp_path / n}.db" for n in ("orders", "payments", "inventory")}
    config = dict(shop_urls, log=log_url, worker="w1", mode="start", count=1, lease=0.6)
    assert spawn(config, "step_started:charge_payment:s0") == -9

    async def body() -> None:
        shop = await Shop.open(shop_urls["orders"], shop_urls["payments"], shop_urls["inventory"])
        log_a, log_b = await open_relational(log_url), await open_relational(log_url)
        gate = Gate()
        long = Saga("long", [Step("wait", gate)])
        try:
            dead = await _row(log_a, "s0")
            assert (dead["state"], dead["owner"]) == ("running", "w1")
            async with (
                SagaEngine(log_a, [shop.saga(), long], worker_id="w1", lease=0.6) as a,
                SagaEngine(log_b, [shop.saga()], worker_id="w2", lease=0.6) as b,
            ):
                running = asyncio.create_task(a.start(long, None, saga_id="L"))
                await asyncio.wait_for(gate.entered.wait(), 30)
                first = float((await _row(log_a, "L"))["lease_until"])

                async def renewed_twice() -> bool:
                    return float((await _row(log_a, "L"))["lease_until"]) >= first + 0.35

                await wait_for(renewed_twice, "the heartbeat renewed the running saga")
                # the dead run's saga was not renewed along with it
                assert (await _row(log_a, "s0"))["lease_until"] == dead["lease_until"]

                recovered: list[Any] = []

                async def taken_over() -> bool:
                    recovered.extend(await b.recover())
                    return bool(recovered)

                await wait_for(taken_over, "another worker took the dead run's saga over")
                assert [(r.saga_id, r.state) for r in recovered] == [("s0", SagaState.COMPLETED)]
                gate.open.set()
                assert (await running).state is SagaState.COMPLETED
        finally:
            await log_a.close()
            await log_b.close()
            await shop.close()

    asyncio.run(body())


# -- a cancelled start ----------------------------------------------------------------


def test_a_cancelled_start_gives_its_saga_back_to_recovery(log_url: str) -> None:
    """The caller of start() is cancelled (a client went away, asyncio.timeout) while
    a step runs: the saga is released at once, not left running and renewed for ever,
    and another worker's recover() finishes it."""
    gate = Gate()
    saga = Saga("order", [Step("first", gate), Step("second", _noop)])

    async def body() -> None:
        log_a, log_b = await open_relational(log_url), await open_relational(log_url)
        try:
            async with (
                SagaEngine(log_a, [saga], worker_id="a") as a,
                SagaEngine(log_b, [saga], worker_id="b") as b,
            ):
                task = asyncio.create_task(a.start(saga, {"n": 1}, saga_id="o1"))
                await asyncio.wait_for(gate.entered.wait(), 30)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                row = await _row(log_a, "o1")
                assert (row["state"], row["owner"], row["lease_until"]) == ("running", None, None)
                gate.open.set()
                (result,) = await b.recover()
                assert (result.saga_id, result.state) == ("o1", SagaState.COMPLETED)
                assert result.outputs == {"first": "through", "second": "second"}
                assert gate.runs == ["o1", "o1"]  # the cut attempt, then b's
        finally:
            await log_a.close()
            await log_b.close()

    asyncio.run(body())


# -- one bad saga ------------------------------------------------------------------------


def test_a_saga_that_no_longer_matches_its_definition_is_blocked_not_fatal(
    log_url: str,
) -> None:
    """A run logged with steps [reserve, charge], then the code changed the steps
    under the same version: recover() finishes the other sagas, gives that one back
    with the reason (not owned by the new worker, not retried before a lease), and a
    worker that registers the definition it started with finishes it later."""
    old_gate = Gate()
    old_gate.open.set()
    old = Saga("order", [Step("reserve", old_gate), Step("charge", _noop)])
    changed = Saga("order", [Step("reserve", _noop), Step("bill", _noop)])
    ship = Saga("ship", [Step("ship", _noop)])

    async def body() -> None:
        log = await open_relational(log_url)
        try:
            async with SagaEngine(log, [old, ship], worker_id="old") as engine:
                await engine.enqueue(old, None, saga_id="bad")
                await engine.enqueue(ship, None, saga_id="good-1")
                await engine.enqueue(ship, None, saga_id="good-2")
            async with SagaEngine(log, [changed, ship], worker_id="new", lease=2.0) as new:
                results = {r.saga_id: r for r in await new.recover()}
                assert {i: r.state for i, r in results.items()} == {
                    "bad": SagaState.PENDING,
                    "good-1": SagaState.COMPLETED,
                    "good-2": SagaState.COMPLETED,
                }
                reason = results["bad"].blocked
                assert reason is not None and "['reserve', 'charge']" in reason
                assert "['reserve', 'bill']" in reason
                row = await _row(log, "bad")
                assert (row["state"], row["owner"], row["blocked"]) == ("pending", None, reason)
                assert (await new.result("bad")).blocked == reason
                shown = await new.list_sagas(state="pending")
                assert [(s["saga_id"], s["blocked"]) for s in shown] == [("bad", reason)]
                # not taken again before a lease has passed (no busy loop on it)
                assert await new.recover() == []
            # a worker that registers the definition it started with finishes it
            async with SagaEngine(log, [old], worker_id="fixed") as fixed:
                finished: list[SagaResult] = []

                async def taken() -> bool:
                    finished.extend(await fixed.recover())
                    return bool(finished)

                await wait_for(taken, "a worker with the right definition finished it")
                assert [(r.saga_id, r.state, r.blocked) for r in finished] == [
                    ("bad", SagaState.COMPLETED, None)
                ]
            assert (await _row(log, "bad"))["blocked"] is None
        finally:
            await log.close()

    asyncio.run(body())


# -- versions ---------------------------------------------------------------------------


def test_old_versions_stay_registered_to_finish_the_runs_they_started(log_url: str) -> None:
    """Version 1 of the order saga has two steps, version 2 three. Runs of version 1
    in flight are finished by version 1; a worker without it leaves them alone."""
    calls: list[str] = []

    def step(name: str) -> Step:
        async def run(ctx: StepContext) -> str:
            calls.append(f"{ctx.saga_id}:{name}")
            return name

        return Step(name, run)

    gate = Gate()
    v1 = Saga("order", [Step("create", gate), step("charge")], version="1")
    v2 = Saga("order", [step("create"), step("charge"), step("notify")], version="2")

    async def body() -> None:
        log = await open_relational(log_url)
        try:
            async with SagaEngine(log, [v1], worker_id="old") as old:
                task = asyncio.create_task(old.start(v1, None, saga_id="o-1"))
                await asyncio.wait_for(gate.entered.wait(), 30)
                task.cancel()  # the old worker is stopped mid-run
                with pytest.raises(asyncio.CancelledError):
                    await task
                await old.enqueue(v1, None, saga_id="o-2")
            gate.open.set()
            async with SagaEngine(log, [v2], worker_id="v2-only") as only_new:
                assert await only_new.recover() == []  # not its version: left alone
                for saga_id in ("o-1", "o-2"):
                    row = await _row(log, saga_id)
                    assert (row["version"], row["owner"], row["blocked"]) == ("1", None, None)
                # the same saga id started with the new definition is the same run: it
                # is not started again, and this worker cannot run it
                same = await only_new.start(v2, None, saga_id="o-2")
                assert (same.state, same.version) == (SagaState.PENDING, "1")
            async with SagaEngine(log, [v2, v1], worker_id="both") as both:
                finished = {r.saga_id: r for r in await both.recover()}
                assert {i: (r.state, r.version) for i, r in finished.items()} == {
                    "o-1": (SagaState.COMPLETED, "1"),
                    "o-2": (SagaState.COMPLETED, "1"),
                }
                assert finished["o-1"].outputs == {"create": "through", "charge": "charge"}
                fresh = await both.start(v2, None, saga_id="o-3")
                assert (fresh.state, fresh.version) == (SagaState.COMPLETED, "2")
                assert list(fresh.outputs) == ["create", "charge", "notify"]
                listed = {s["saga_id"]: s["version"] for s in await both.list_sagas()}
                assert listed == {"o-1": "1", "o-2": "1", "o-3": "2"}
            assert sorted(c for c in calls if c.startswith("o-3")) == [
                "o-3:charge",
                "o-3:create",
                "o-3:notify",
            ]
        finally:
            await log.close()

    asyncio.run(body())


def test_a_log_made_before_versions_gets_the_new_columns(log_url: str) -> None:
    """A log whose table predates ``version`` and ``blocked``: setup adds them, and its
    unfinished runs are taken as version 1."""
    saga = Saga("ship", [Step("ship", _noop)])

    async def body() -> None:
        log = await open_relational(log_url)
        try:
            await log.execute(
                "CREATE TABLE multistore_sagas (saga_id VARCHAR(255) PRIMARY KEY, "
                "name VARCHAR(255) NOT NULL, state VARCHAR(20) NOT NULL, input TEXT NOT NULL, "
                "error TEXT, compensation_error TEXT, deadline DOUBLE PRECISION, "
                "owner VARCHAR(255), lease_until DOUBLE PRECISION, "
                "created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL)"
            )
            await log.execute(
                "INSERT INTO multistore_sagas VALUES ('p-1', 'ship', 'pending', 'null', NULL, "
                "NULL, NULL, NULL, NULL, 1.0, 1.0)"
            )
            async with SagaEngine(log, [saga]) as engine:
                await engine.setup()
                await log.execute(
                    "INSERT INTO multistore_saga_steps VALUES ('p-1', 0, 'ship', 'pending', 0, "
                    "NULL, NULL, 0, NULL, 1.0)"
                )
                (result,) = await engine.recover()
                assert (result.saga_id, result.state, result.version) == (
                    "p-1",
                    SagaState.COMPLETED,
                    "1",
                )
        finally:
            await log.close()

    asyncio.run(body())
