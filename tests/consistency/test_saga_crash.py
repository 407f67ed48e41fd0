"""Crash recovery and several workers, with real processes.

The order saga runs in a subprocess (``tests/consistency/saga_worker.py``) that
SIGKILLs itself at a chosen point; a restarted worker recovers; then every saga must
be completed or compensated and every effect applied exactly once (rows counted in
the three shop databases).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from multistore.consistency._saga import StepContext
from multistore.consistency._saga_engine import SagaEngine
from multistore.core._saga import SagaState
from multistore.lab.servers import PostgresServer
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore
from tests.consistency.saga_shop import INITIAL_STOCK, Shop, order_input
from tests.consistency.saga_worker import spawn

ROOT = Path(__file__).resolve().parents[2]
COUNT = 4  # s0, s2 complete; s1, s3 compensate (no stock of the rare item)


_worker = spawn


def _sqlite_config(tmp_path: Path, mode: str, worker: str = "w1") -> dict[str, Any]:
    names = ("log", "orders", "payments", "inventory")
    config: dict[str, Any] = {n: f"sqlite:///{tmp_path / n}.db" for n in names}
    config.update(worker=worker, mode=mode, count=COUNT, executions=None)
    return config


async def _open(url: str) -> RelationalStore:
    store = await open_store(url, model="relational")
    assert isinstance(store, RelationalStore)
    return store


async def _check_all_done(config: dict[str, Any]) -> dict[str, Any]:
    """Every saga finished as expected; every effect exactly once. Returns the log."""
    shop = await Shop.open(config["orders"], config["payments"], config["inventory"])
    log = await _open(config["log"])
    try:
        async with SagaEngine(log, [shop.saga()]) as engine:
            states = {s["saga_id"]: s["state"] for s in await engine.list_sagas()}
            shown = {sid: await engine.show(sid) for sid in states}
        expected = {f"s{i}": "completed" if i % 2 == 0 else "compensated" for i in range(COUNT)}
        assert states == expected
        completed = COUNT - COUNT // 2
        assert await shop.counts() == {
            "orders": COUNT,
            "orders_cancelled": COUNT // 2,
            "payments": COUNT,
            "payments_refunded": COUNT // 2,
            "refunds": COUNT // 2,
            "reservations": completed,
            "book_stock": INITIAL_STOCK["book"] - completed,
        }
        return shown
    finally:
        await log.close()
        await shop.close()


CRASH_POINTS = [
    # before a step: its start is not logged yet
    ("step_starting:charge_payment:s2", "s2", "charge_payment", 1),
    # the step is logged as started (compensation registered), its action has not run
    ("step_started:charge_payment:s2", "s2", "charge_payment", 2),
    # after the step's effect, before its log record: the action runs again, the
    # effect is not applied twice
    ("effect:charge_payment:s2", "s2", "charge_payment", 2),
    ("effect:reserve_inventory:s2", "s2", "reserve_inventory", 2),
    ("effect:create_order:s1", "s1", "create_order", 2),
    # after a step's output was logged
    ("step_completed:create_order:s1", "s1", "create_order", 1),
    # during compensation: before it, and after the refund before its log record
    ("compensation_starting:charge_payment:s1", "s1", "charge_payment", 1),
    ("undo:charge_payment:s1", "s1", "charge_payment", 1),
    ("undo:create_order:s3", "s3", "create_order", 1),
]


# The same saga with payment and reservation as one parallel group.
PARALLEL_CRASH_POINTS = [
    # the group's start is logged for both members, neither action has run
    ("step_started:charge_payment:s2", "s2", "charge_payment", 2),
    # one member's effect committed, the group's outcome not logged: both run again
    ("effect:charge_payment:s2", "s2", "charge_payment", 2),
    ("effect:reserve_inventory:s2", "s2", "reserve_inventory", 2),
    # the failed group compensates its member that charged, after the refund
    ("undo:charge_payment:s1", "s1", "charge_payment", 1),
    ("compensation_starting:charge_payment:s3", "s3", "charge_payment", 1),
]


@pytest.mark.parametrize(
    ("parallel", "crash_at", "saga_id", "step", "attempts"),
    [(False, *point) for point in CRASH_POINTS]
    + [(True, *point) for point in PARALLEL_CRASH_POINTS],
)
def test_sigkill_then_recover_finishes_every_saga_exactly_once(
    tmp_path: Path, parallel: bool, crash_at: str, saga_id: str, step: str, attempts: int
) -> None:
    """The order saga, sequential or with payment and reservation as one parallel
    group, killed at ``crash_at``; a restarted worker finishes every saga and every
    effect is counted exactly once."""
    config = _sqlite_config(tmp_path, "start")
    config["parallel"] = parallel
    assert _worker(config, crash_at) == -9  # it really died at that point
    config["mode"] = "recover"
    assert _worker(config) == 0
    shown = asyncio.run(_check_all_done(config))
    steps = {s["name"]: s for s in shown[saga_id]["steps"]}
    assert steps[step]["attempts"] == attempts


def test_recover_without_a_crash_is_a_no_op(tmp_path: Path) -> None:
    config = _sqlite_config(tmp_path, "start")
    assert _worker(config) == 0
    config["mode"] = "recover"
    assert _worker(config) == 0
    asyncio.run(_check_all_done(config))


def test_crashed_workers_lease_is_taken_over_only_after_it_expires(tmp_path: Path) -> None:
    config = _sqlite_config(tmp_path, "start")
    config["lease"] = 3.0
    assert _worker(config, "effect:charge_payment:s0") == -9

    async def body() -> None:
        shop = await Shop.open(config["orders"], config["payments"], config["inventory"])
        log = await _open(config["log"])
        # The second worker reads the time from this clock, so the test (not the speed
        # of the machine) decides whether the crashed worker's lease still runs.
        now = [0.0]
        try:
            saga = shop.saga()
            async with SagaEngine(log, [saga], worker_id="w2", clock=lambda: now[0]) as other:
                unfinished = await other.list_sagas(state="running")
                assert [(s["saga_id"], s["owner"]) for s in unfinished] == [("s0", "w1")]
                lease_until = float(unfinished[0]["lease_until"])
                # the crashed worker's lease still runs: another worker must not take it
                now[0] = lease_until - 0.5
                assert await other.recover() == []
                still = await other.list_sagas(state="running")
                assert [(s["saga_id"], s["owner"]) for s in still] == [("s0", "w1")]
                assert float(still[0]["lease_until"]) == lease_until  # not renewed either
                # once it has run out, the saga is taken over and finished
                now[0] = lease_until + 0.01
                recovered = await other.recover()
                assert [(r.saga_id, r.state) for r in recovered] == [("s0", SagaState.COMPLETED)]
                for i in range(1, COUNT):
                    await other.start(saga, order_input(i), saga_id=f"s{i}")
        finally:
            await log.close()
            await shop.close()
        await _check_all_done(config)

    asyncio.run(body())


def test_live_worker_keeps_its_lease_with_heartbeats(tmp_path: Path) -> None:
    """A step that runs longer than the lease: the heartbeat renews it, so another
    worker polling recover() never takes the saga over."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    runs: list[str] = []
    release = asyncio.Event()

    async def long_step(ctx: StepContext) -> str:
        runs.append(ctx.saga_id)
        await release.wait()
        return "done"

    from multistore.consistency._saga import Saga, Step

    saga = Saga("long", [Step("wait", long_step)])

    async def body() -> None:
        log_a, log_b = await _open(url), await _open(url)
        try:
            async with (
                SagaEngine(log_a, [saga], worker_id="a", lease=0.3) as a,
                SagaEngine(log_b, [saga], worker_id="b", lease=0.3) as b,
            ):
                running = asyncio.create_task(a.start(saga, None, saga_id="L"))
                until = time.monotonic() + 1.5  # five leases long
                while time.monotonic() < until:
                    assert await b.recover() == []
                    await asyncio.sleep(0.05)
                release.set()
                result = await running
                assert result.state is SagaState.COMPLETED
                assert runs == ["L"]
        finally:
            await log_a.close()
            await log_b.close()

    asyncio.run(body())


# -- several workers on one PostgreSQL log --------------------------------------------


def _with_option(url: str, option: str) -> str:
    return url + ("&" if "?" in url else "?") + option


def _enqueue_and_work(server: PostgresServer, workers: int, sagas: int, timeout: float) -> None:
    log_url = server.create_database()
    shop_url = server.create_database()
    # small pools: 8 processes x 5 stores must stay under max_connections (100)
    small = _with_option(shop_url, "pool_max=1")
    config: dict[str, Any] = {
        "log": _with_option(log_url, "pool_max=4"),
        "orders": small,
        "payments": small,
        "inventory": small,
        "executions": small,
        "mode": "work",
    }

    async def enqueue() -> None:
        shop = await Shop.open(shop_url, shop_url, shop_url, executions=shop_url)
        log = await _open(log_url)
        try:
            await shop.setup()
            saga = shop.saga()
            async with SagaEngine(log, [saga]) as engine:
                for i in range(sagas):
                    await engine.enqueue(saga, order_input(i), saga_id=f"s{i}")
        finally:
            await log.close()
            await shop.close()

    asyncio.run(enqueue())
    procs = []
    for w in range(workers):
        cfg = dict(config, worker=f"w{w}")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.consistency.saga_worker", json.dumps(cfg)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for p in procs:
            _out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()

    async def check() -> None:
        shop = await Shop.open(shop_url, shop_url, shop_url, executions=shop_url)
        log = await _open(log_url)
        try:
            states = await log.fetch_all(
                "SELECT state, COUNT(*) AS n FROM multistore_sagas GROUP BY state ORDER BY state"
            )
            completed = sagas - sagas // 2
            assert [(r["state"], r["n"]) for r in states] == [
                ("compensated", sagas // 2),
                ("completed", completed),
            ]
            assert shop.executions is not None
            # each action ran exactly once, by one worker, for every saga
            runs = await shop.executions.fetch_all(
                "SELECT saga_id, step, COUNT(*) AS n, COUNT(DISTINCT worker) AS w "
                "FROM executions GROUP BY saga_id, step"
            )
            assert len(runs) == sagas * 3
            assert all(r["n"] == 1 for r in runs)
            per_saga = await shop.executions.fetch_all(
                "SELECT saga_id FROM executions GROUP BY saga_id HAVING COUNT(DISTINCT worker) > 1"
            )
            assert per_saga == []
            counts = await shop.counts()
            assert counts["orders"] == sagas
            assert counts["refunds"] == sagas // 2
            assert counts["reservations"] == completed
            assert counts["book_stock"] == INITIAL_STOCK["book"] - completed
        finally:
            await log.close()
            await shop.close()

    asyncio.run(check())


@pytest.mark.server
def test_four_workers_on_one_postgres_log_run_each_saga_once(
    postgres_server: PostgresServer,
) -> None:
    if not postgres_server.is_running():
        postgres_server.start()
    _enqueue_and_work(postgres_server, workers=4, sagas=100, timeout=90)


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_eight_workers_thousand_sagas(postgres_server: PostgresServer) -> None:
    if not postgres_server.is_running():
        postgres_server.start()
    _enqueue_and_work(postgres_server, workers=8, sagas=1000, timeout=600)
