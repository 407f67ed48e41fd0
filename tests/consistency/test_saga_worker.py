"""The saga worker: in Python (:class:`SagaWorker`) and as ``multistore sagas worker``
processes sharing one PostgreSQL log, one of them SIGKILLed mid-saga."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from multistore.consistency import Saga, SagaEngine, SagaWorker, Step, StepContext
from multistore.lab.servers import PostgresServer
from tests.consistency.helpers import open_relational, wait_for
from tests.consistency.worker_sagas import SAGAS, TABLES

ROOT = Path(__file__).resolve().parents[2]


def test_worker_runs_enqueued_sagas_until_stopped_then_lets_the_running_one_finish(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    ran: list[str] = []
    entered, gate = asyncio.Event(), asyncio.Event()

    async def step(ctx: StepContext) -> str:
        ran.append(ctx.saga_id)
        if ctx.saga_id == "last":
            entered.set()
            await gate.wait()
        return "ok"

    saga = Saga("ship", [Step("ship", step)])

    async def body() -> None:
        log = await open_relational(url)
        async with log, SagaEngine(log, [saga], worker_id="w", concurrency=2) as engine:
            for i in range(5):
                await engine.enqueue(saga, {"n": i}, saga_id=f"s{i}")
            worker = SagaWorker(engine, poll_interval=0.01, max_poll_interval=0.05)
            stop = asyncio.Event()
            running = asyncio.create_task(worker.run(stop))

            async def five_done() -> bool:
                return worker.statistics().completed == 5

            await wait_for(five_done, "the worker ran the enqueued sagas")
            # a saga enqueued while it runs is picked up too
            await engine.enqueue(saga, None, saga_id="last")
            await asyncio.wait_for(entered.wait(), 30)
            stop.set()  # graceful: the running saga finishes first
            assert not running.done()
            gate.set()
            await asyncio.wait_for(running, 30)
            stats = worker.statistics()
            assert (stats.claimed, stats.completed, stats.given_up) == (6, 6, 0)
            assert sorted(ran) == ["last", "s0", "s1", "s2", "s3", "s4"]
            states = {s["saga_id"]: (s["state"], s["owner"]) for s in await engine.list_sagas()}
            assert set(states.values()) == {("completed", None)}

    asyncio.run(body())


def test_a_stop_past_its_grace_gives_the_running_saga_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    entered = asyncio.Event()

    async def hangs(ctx: StepContext) -> str:
        entered.set()
        await asyncio.Event().wait()
        return "never"

    saga = Saga("hang", [Step("hang", hangs)])

    async def body() -> None:
        log = await open_relational(url)
        async with log, SagaEngine(log, [saga], worker_id="w") as engine:
            await engine.enqueue(saga, None, saga_id="h")
            worker = SagaWorker(engine, poll_interval=0.01, grace=0.0)
            stop = asyncio.Event()
            running = asyncio.create_task(worker.run(stop))
            await asyncio.wait_for(entered.wait(), 30)
            stop.set()
            await asyncio.wait_for(running, 30)
            assert worker.statistics().given_up == 1
            (row,) = await engine.list_sagas()
            assert (row["state"], row["owner"], row["lease_until"]) == ("running", None, None)

    asyncio.run(body())


def _spawn_worker(config: Path, name: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "multistore",
            "sagas",
            "worker",
            "-c",
            str(config),
            "--definitions",
            "tests.consistency.worker_sagas:SAGAS",
            "--worker-id",
            name,
            "--concurrency",
            "4",
            "--lease",
            "1",
            "--json",
        ],
        cwd=ROOT,
        env={**os.environ, **env, "SAGA_WORKER_NAME": name},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.server
def test_two_worker_processes_one_killed_every_saga_finishes_once(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Two `multistore sagas worker` processes on one PostgreSQL log; one is SIGKILLed
    right after the effect of its 15th step. The other takes its sagas over once their
    leases run out: every saga completes, every effect is in the side table once, and
    a step ran twice only where the killed worker had run it."""
    if not postgres_server.is_running():
        postgres_server.start()
    log_url, effects_url = postgres_server.create_database(), postgres_server.create_database()
    config = tmp_path / "multistore.toml"
    config.write_text(f'[roles]\nsagas = "{log_url}"\n')
    count = 40

    async def enqueue() -> None:
        effects = await open_relational(effects_url)
        log = await open_relational(log_url)
        async with effects, log, SagaEngine(log, SAGAS) as engine:
            for statement in TABLES:
                await effects.execute(statement)
            for i in range(count):
                await engine.enqueue(SAGAS[0], {"amount": i}, saga_id=f"t{i}")

    asyncio.run(enqueue())
    env = {"SAGA_EFFECTS_URL": effects_url}
    killed = _spawn_worker(config, "A", {**env, "SAGA_KILL_AFTER": "15"})
    survivor: subprocess.Popen[str] | None = None
    try:
        # B starts once A has begun: a B that started first could run every saga
        # while A was still importing, and A would never reach its 15th step

        async def a_began() -> bool:
            if killed.poll() is not None:
                return True
            effects = await open_relational(effects_url)
            async with effects:
                n = await effects.fetch_val("SELECT COUNT(*) FROM executions")
            return int(n) > 0

        asyncio.run(wait_for(a_began, "worker A ran its first step", within=60))
        survivor = _spawn_worker(config, "B", env)
        _, err = killed.communicate(timeout=60)
        assert killed.returncode == -9, err

        async def all_completed() -> bool:
            log = await open_relational(log_url)
            async with log:
                n = await log.fetch_val(
                    "SELECT COUNT(*) FROM multistore_sagas WHERE state = 'completed'"
                )
            return int(n) == count

        async def wait_all() -> None:
            await wait_for(all_completed, "every saga completed", within=60)

        asyncio.run(wait_all())
        assert survivor is not None
        survivor.send_signal(signal.SIGTERM)  # a graceful stop
        out, err = survivor.communicate(timeout=60)
        assert survivor.returncode == 0, err
    finally:
        for proc in (killed, survivor):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    stats = json.loads(out)
    assert stats["worker_id"] == "B" and stats["completed"] > 0

    async def check() -> dict[str, Any]:
        effects = await open_relational(effects_url)
        log = await open_relational(log_url)
        async with effects, log:
            rows = await log.fetch_all("SELECT state, owner FROM multistore_sagas")
            assert {(r["state"], r["owner"]) for r in rows} == {("completed", None)}
            applied = await effects.fetch_all(
                "SELECT saga_id, step, COUNT(*) AS n FROM effects GROUP BY saga_id, step"
            )
            assert len(applied) == count * 3 and {int(r["n"]) for r in applied} == {1}
            runs = await effects.fetch_all(
                "SELECT saga_id, step, COUNT(*) AS n, "
                "SUM(CASE WHEN worker = 'A' THEN 1 ELSE 0 END) AS by_a "
                "FROM executions GROUP BY saga_id, step"
            )
            again = [r for r in runs if int(r["n"]) > 1]
            return {
                "runs": len(runs),
                "again": [(r["saga_id"], int(r["n"]), int(r["by_a"])) for r in again],
                "by_a": sum(int(r["by_a"]) for r in runs),
            }

    seen = asyncio.run(check())
    assert seen["runs"] == count * 3
    # it ran 15 steps, and up to 3 more had begun in its other sagas when it died
    assert 15 <= seen["by_a"] <= 18
    # a step ran again only when the killed worker had run it (at most its 4 sagas)
    assert 1 <= len(seen["again"]) <= 4
    assert all(n == 2 and by_a == 1 for _, n, by_a in seen["again"])


def test_the_worker_command_names_a_bad_definitions_spec(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "multistore", "sagas", "worker", "--definitions", "nope:X"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 20
    assert "--definitions: cannot import 'nope'" in done.stderr
