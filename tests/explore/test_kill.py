"""`Simulation.kill` and `Simulation.interrupt` from a `Simulation.watches` callback: an
actor crashed, or its request cancelled, right after a chosen store call took effect."""

from __future__ import annotations

import asyncio
from typing import cast

from multistore.lab.explore import Actor, Faults, InvariantViolation, Simulation, run_schedule
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore


async def _table(sim: Simulation) -> str:
    url = f"sqlite:///{sim.directory / 'db'}.db"
    setup = cast(RelationalStore, await open_store(url, model="relational"))
    await setup.execute("CREATE TABLE calls (n INT NOT NULL)")
    await setup.close()
    return url


async def _rows(url: str) -> list[int]:
    store = cast(RelationalStore, await open_store(url, model="relational"))
    try:
        return [int(r["n"]) for r in await store.fetch_all("SELECT n FROM calls ORDER BY n")]
    finally:
        await store.close()


async def _killed_after_the_second_insert(sim: Simulation) -> None:
    url = await _table(sim)
    incarnations: list[int] = []

    def watch(actor: Actor, what: str) -> None:
        if actor.incarnation == 1 and "INSERT INTO calls" in what and len(incarnations) == 2:
            sim.kill(actor)

    sim.watches.append(watch)

    async def main(actor: Actor) -> None:
        store = cast(RelationalStore, await open_store(url, model="relational"))
        try:
            for n in range(4):
                if actor.incarnation == 2:
                    n += 10
                incarnations.append(actor.incarnation)
                await store.execute("INSERT INTO calls VALUES (:n)", {"n": n})
        finally:
            await store.close()

    app = sim.spawn("app", main, restart=main)
    await sim.join(app)
    sim.quiesce()
    sim.kill(app.last())  # the faults are off: nothing happens
    rows = await _rows(url)
    # The second insert took effect, the third never ran; the restart did all four.
    if rows != [0, 1, 10, 11, 12, 13]:
        raise InvariantViolation(f"rows {rows}")
    if app.last().incarnation != 2:
        raise InvariantViolation(f"incarnations: {app.last()!r}")


async def _request_interrupted_after_its_insert(sim: Simulation) -> None:
    url = await _table(sim)
    outcomes: list[str] = []

    def watch(actor: Actor, what: str) -> None:
        if "INSERT INTO calls" in what and len(outcomes) == 1:
            sim.interrupt(actor)

    sim.watches.append(watch)

    async def main(actor: Actor) -> None:
        store = cast(RelationalStore, await open_store(url, model="relational"))

        async def request(n: int) -> None:
            await store.execute("INSERT INTO calls VALUES (:n)", {"n": n})
            await store.execute("INSERT INTO calls VALUES (:n)", {"n": n + 100})

        try:
            for n in range(3):
                try:
                    await actor.call(request(n))
                    outcomes.append("done")
                except asyncio.CancelledError:
                    outcomes.append("cancelled")
        finally:
            await store.close()

    await sim.join(sim.spawn("server", main))
    rows = await _rows(url)
    # The second request's first insert took effect, its second never ran.
    if outcomes != ["done", "cancelled", "done"] or rows != [0, 1, 2, 100, 102]:
        raise InvariantViolation(f"outcomes {outcomes}, rows {rows}")


def test_a_killed_actor_keeps_what_it_wrote_and_restarts() -> None:
    for seed in range(5):
        schedule = run_schedule(_killed_after_the_second_insert, seed, Faults())
        assert schedule.error is None, schedule.error
        assert schedule.faults == 0  # a kill is not one of the drawn faults
        assert any(line.endswith("app#1 killed by the scenario") for line in schedule.trace)


def test_an_interrupted_request_is_cancelled_after_its_call_took_effect() -> None:
    for seed in range(5):
        schedule = run_schedule(_request_interrupted_after_its_insert, seed, Faults())
        assert schedule.error is None, schedule.error
        assert schedule.faults == 0
