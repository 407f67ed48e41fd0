"""Sagas under the explorer: a client process starting sagas (each a request that may be
cancelled), a second worker recovering beside it, crashes and restarts.

Each step's effect is a row keyed by the step's idempotency key in ``effects``; each
compensation a row in ``undone``. Invariants once a fresh worker has recovered what is
left: every saga that the log knows is completed or compensated (none running, pending
or stuck); a completed saga has all its effects and nothing undone; a compensated saga
has every effect it applied undone; a saga the log does not know left no effect.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from multistore.consistency import Saga, SagaEngine, Step, StepContext
from multistore.core import SagaState
from multistore.errors import MultistoreError, NotFoundError
from multistore.lab.explore import Actor, InvariantViolation, LivenessError, Simulation
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore

STEPS = ("reserve", "charge", "ship")
LEASE = 10.0


class Business(Exception):
    """The last step refuses: the saga compensates."""


def define(shop: RelationalStore) -> Saga:
    async def act(ctx: StepContext) -> None:
        if ctx.step == "ship" and cast(dict[str, Any], ctx.input)["fail"]:
            raise Business("cannot ship")
        await shop.execute(
            "INSERT INTO effects VALUES (:k, :s) ON CONFLICT DO NOTHING",
            {"k": ctx.idempotency_key, "s": ctx.saga_id},
        )

    async def undo(ctx: StepContext) -> None:
        await shop.execute(
            "INSERT INTO undone VALUES (:k, :s) ON CONFLICT DO NOTHING",
            {"k": ctx.idempotency_key, "s": ctx.saga_id},
        )

    return Saga("order", [Step(name, act, compensate=undo) for name in STEPS])


class Process:
    """A process with a saga engine (worker id fixed, as a restarted worker keeps it)."""

    def __init__(self, sim: Simulation, worker: str, urls: dict[str, str]) -> None:
        self.sim = sim
        self.worker = worker
        self.urls = urls

    async def open(self, actor: Actor) -> tuple[SagaEngine, list[RelationalStore], Saga]:
        log = cast(RelationalStore, await open_store(self.urls["log"], model="relational"))
        shop = cast(RelationalStore, await open_store(self.urls["shop"], model="relational"))
        saga = define(shop)
        engine = SagaEngine(log, [saga], worker_id=self.worker, lease=LEASE, clock=actor.wall_clock)
        return engine, [log, shop], saga


async def close(engine: SagaEngine, stores: list[RelationalStore]) -> None:
    await engine.close()
    for store in stores:
        await store.close()


async def sagas(sim: Simulation) -> None:
    urls = {name: f"sqlite:///{sim.directory / name}.db" for name in ("log", "shop")}
    shop = cast(RelationalStore, await open_store(urls["shop"], model="relational"))
    await shop.execute_script(
        "CREATE TABLE effects (k TEXT PRIMARY KEY, saga TEXT NOT NULL);"
        "CREATE TABLE undone (k TEXT PRIMARY KEY, saga TEXT NOT NULL)"
    )
    await shop.close()
    ids = [f"s{i}" for i in range(sim.choices.randint(1, 3))]
    fails = {i: sim.choices.random() < 0.4 for i in ids}
    stop = asyncio.Event()
    ready = asyncio.Event()

    client = Process(sim, "w1", urls)

    async def serve(actor: Actor) -> None:
        """Start the sagas, one request each, then stay up (heartbeat running)."""
        try:
            engine, stores, saga = await client.open(actor)
        except MultistoreError:
            return
        try:
            if actor.incarnation > 1:
                try:
                    await actor.call(engine.recover())
                except (MultistoreError, asyncio.CancelledError) as exc:
                    sim.note(f"{actor.label} recover: {type(exc).__name__}")
            for saga_id in ids:
                try:
                    await actor.call(engine.start(saga, {"fail": fails[saga_id]}, saga_id=saga_id))
                except (MultistoreError, asyncio.CancelledError) as exc:
                    sim.note(f"{actor.label} start {saga_id}: {type(exc).__name__}")
            ready.set()
            await stop.wait()
        finally:
            await close(engine, stores)

    second = Process(sim, "w2", urls)

    async def work(actor: Actor) -> None:
        """Another worker: recover now and then."""
        try:
            engine, stores, _ = await second.open(actor)
        except MultistoreError:
            return
        try:
            for _ in range(sim.choices.randint(1, 4)):
                await asyncio.sleep(sim.choices.uniform(0, 2 * LEASE))
                try:
                    await actor.call(engine.recover())
                except (MultistoreError, asyncio.CancelledError) as exc:
                    sim.note(f"{actor.label} recover: {type(exc).__name__}")
        finally:
            await close(engine, stores)

    server = sim.spawn("client", serve, restart=serve)
    actors = [server]
    if sim.choices.random() < 0.6:
        actors.append(sim.spawn("worker2", work, restart=work))
    await sim.join(*actors[1:])
    # The client has made its requests (and keeps running), or is gone for good.
    waiting = asyncio.ensure_future(ready.wait())
    await asyncio.wait([waiting, server.finished], timeout=3600, return_when="FIRST_COMPLETED")
    waiting.cancel()
    sim.quiesce()
    final = Process(sim, "final", urls)
    engine, stores, _ = await final.open(server)
    try:
        for _ in range(40):  # a fresh worker: leases of dead ones expire meanwhile
            await engine.recover()
            states = [await _state(engine, i) for i in ids]
            if all(s in (None, SagaState.COMPLETED, SagaState.COMPENSATED) for s in states):
                break
            await asyncio.sleep(LEASE / 2)
        else:
            raise LivenessError(
                "sagas never finished with a live client process and a fresh worker: "
                + ", ".join(f"{i}={s}" for i, s in zip(ids, states, strict=True))
            )
        await check(engine, stores[1], ids, fails)
    finally:
        stop.set()
        await close(engine, stores)
    await sim.join(server)


async def _state(engine: SagaEngine, saga_id: str) -> SagaState | None:
    try:
        return (await engine.result(saga_id)).state
    except NotFoundError:
        return None


async def check(
    engine: SagaEngine, shop: RelationalStore, ids: list[str], fails: dict[str, bool]
) -> None:
    effects = {r["k"] for r in await shop.fetch_all("SELECT k FROM effects")}
    undone = {r["k"] for r in await shop.fetch_all("SELECT k FROM undone")}
    for saga_id in ids:
        state = await _state(engine, saga_id)
        mine = {k for k in effects if k.startswith(f"{saga_id}:")}
        mine_undone = {k for k in undone if k.startswith(f"{saga_id}:")}
        if state is None:
            if mine or mine_undone:
                raise InvariantViolation(f"{saga_id} is not in the log but left {mine}")
        elif state is SagaState.COMPLETED:
            want = {f"{saga_id}:{s}" for s in STEPS}
            if fails[saga_id] or mine != want or mine_undone:
                raise InvariantViolation(
                    f"{saga_id} completed with effects {sorted(mine)}, undone {sorted(mine_undone)}"
                )
        elif state is SagaState.COMPENSATED:
            # (a refusing step, or one whose store kept failing past its retries)
            if not mine <= mine_undone:
                raise InvariantViolation(
                    f"{saga_id} compensated but {sorted(mine - mine_undone)} not undone"
                )
        else:
            raise InvariantViolation(f"{saga_id} ended {state}")
