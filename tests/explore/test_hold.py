"""`Simulation.hold`: an actor descheduled for a number of the other actors' steps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from multistore.lab.explore import Actor, Faults, InvariantViolation, Simulation, run_schedule
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore


async def _held_between_two_calls(sim: Simulation) -> None:
    url = f"sqlite:///{sim.directory / 'db'}.db"
    setup = cast(RelationalStore, await open_store(url, model="relational"))
    await setup.execute("CREATE TABLE calls (who TEXT NOT NULL)")
    await setup.close()
    order: list[str] = []

    def worker(name: str, calls: int, hold: int = 0) -> Callable[[Actor], Awaitable[None]]:
        async def main(actor: Actor) -> None:
            store = cast(RelationalStore, await open_store(url, model="relational"))
            try:
                for n in range(calls):
                    await store.execute("INSERT INTO calls VALUES (:w)", {"w": name})
                    order.append(name)
                    if n == 0 and hold:
                        await sim.hold(hold)
            finally:
                await store.close()

        return main

    held = sim.spawn("held", worker("held", 2, hold=5))
    other = sim.spawn("other", worker("other", 20))
    await sim.join(held, other)
    if order.count("held") != 2 or order.count("other") != 20:
        raise InvariantViolation(f"calls lost: {order}")


async def _hold_ends_when_nobody_else_steps(sim: Simulation) -> None:
    async def alone(actor: Actor) -> None:
        await sim.hold(1000)

    await sim.join(sim.spawn("alone", alone), within=1.0)


def test_a_held_actor_waits_for_the_others_steps() -> None:
    for seed in range(10):
        schedule = run_schedule(_held_between_two_calls, seed, Faults())
        assert schedule.error is None, schedule.error
        trace = [line.split(None, 1)[1] for line in schedule.trace]
        start = trace.index("held#1 held for 5 steps")
        # The store calls (steps) after the hold began, in order.
        after = [line for line in trace[start + 1 :] if ": " in line]
        steps_left = sum(line.startswith("other#1 ") for line in after)
        took = next((i for i, line in enumerate(after) if line.startswith("held#1 ")), len(after))
        # Five of the other's steps before the held one's next, or every step it had left.
        assert took >= min(5, steps_left), (seed, after[: took + 1])


def test_a_hold_ends_when_no_other_actor_has_a_step_to_take() -> None:
    schedule = run_schedule(_hold_ends_when_nobody_else_steps, 0, Faults())
    assert schedule.error is None, schedule.error
