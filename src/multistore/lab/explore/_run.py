"""Run a scenario under many seeds and report the first schedule that breaks it.

::

    async def transfers(sim: Simulation) -> None:
        ...  # set up stores under sim.directory, spawn actors, join, quiesce, check

    report = explore(transfers, seeds=range(2000), faults=Faults.all())

A failure raises :class:`ScheduleFailed`: its message names the seed, the exception
the scenario raised (an :class:`InvariantViolation`, a deadlock, or an exception that
escaped the protocol code) and the end of the schedule's trace; ``run_schedule(…,
seed)`` replays exactly that schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from multistore.lab.explore._loop import DeadlockError
from multistore.lab.explore._sim import ActorState, Faults, Simulation

__all__ = ["ExploreReport", "Schedule", "ScheduleFailed", "explore", "run_schedule"]

Scenario = Callable[[Simulation], Awaitable[None]]

#: Trace lines shown in a failure message (the whole trace is on the exception).
TRACE_TAIL = 60


@dataclass(frozen=True)
class Schedule:
    """What one seed did."""

    seed: int
    steps: int
    faults: int
    virtual_seconds: float
    trace: tuple[str, ...]
    error: BaseException | None = None

    @property
    def digest(self) -> str:
        """A hash of the trace: equal for two runs of the same seed if it replays."""
        return hashlib.sha256("\n".join(self.trace).encode()).hexdigest()[:16]


class ScheduleFailed(AssertionError):
    """A schedule broke an invariant (or deadlocked, or raised)."""

    def __init__(self, name: str, schedule: Schedule, replay: str) -> None:
        self.schedule = schedule
        tail = schedule.trace[-TRACE_TAIL:]
        skipped = len(schedule.trace) - len(tail)
        error = schedule.error
        super().__init__(
            f"explorer: {name}: seed {schedule.seed} failed after {schedule.steps} steps "
            f"and {schedule.faults} faults: {type(error).__name__}: {error}\n"
            f"replay it: {replay.format(seed=schedule.seed)}\n"
            f"trace ({'last ' + str(len(tail)) + ' of ' if skipped else ''}"
            f"{len(schedule.trace)} lines):\n  " + "\n  ".join(tail)
        )


@dataclass
class ExploreReport:
    """What :func:`explore` ran."""

    name: str
    schedules: int = 0
    steps: int = 0
    faults: int = 0
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    """Counts of what the scenario reported for each schedule (see ``Simulation.note``
    is for the trace; scenarios return nothing, so this counts actor end states)."""
    replayed: bool = False
    """One seed replayed (``--explore-seed``), not an exploration: a seed may inject no
    fault at all."""

    def summary(self) -> str:
        per = self.seconds / self.schedules * 1000 if self.schedules else 0.0
        return (
            f"{self.name}: {self.schedules} schedules, {self.steps} steps, "
            f"{self.faults} faults injected, {self.seconds:.1f} s ({per:.1f} ms each)"
        )


def _scratch() -> Path:
    """A directory for the schedules' files: in memory where the system has one."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="multistore-explore-", dir=base))


def run_schedule(
    scenario: Scenario,
    seed: int,
    faults: Faults,
    *,
    directory: Path | None = None,
    virtual: bool = True,
) -> Schedule:
    """Run one schedule of ``scenario`` (its files in a fresh directory, removed after);
    ``virtual=False`` for scenarios on real database servers (real time and I/O)."""
    root = directory if directory is not None else _scratch()
    workdir = root / f"seed-{seed}"
    workdir.mkdir(parents=True, exist_ok=True)
    sim = Simulation(seed, faults, workdir, virtual=virtual)
    loop = sim.loop
    error: BaseException | None = None
    try:
        with sim.patched():
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(_main(sim, scenario))
            except BaseException as exc:
                error = exc
            finally:
                _cancel_all(loop)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
        shutil.rmtree(workdir, ignore_errors=True)
        if directory is None:
            shutil.rmtree(root, ignore_errors=True)
    return Schedule(
        seed=seed,
        steps=sim.steps,
        faults=sim.fault_count,
        virtual_seconds=loop.time(),
        trace=tuple(sim.trace),
        error=error,
    )


async def _main(sim: Simulation, scenario: Scenario) -> None:
    await scenario(sim)
    failed = [a for a in sim.actors if a.state is ActorState.FAILED]
    if failed:
        first = failed[0]
        raise AssertionError(
            f"actor {first.label} raised {type(first.error).__name__}: {first.error}"
        ) from first.error


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left (actors a scenario did not stop) and let it unwind."""
    for _ in range(3):
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        if not pending:
            break
        for task in pending:
            task.cancel()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(asyncio.wait(pending, timeout=60.0))
    with contextlib.suppress(BaseException):
        loop.run_until_complete(loop.shutdown_asyncgens())


def explore(
    scenario: Scenario,
    *,
    seeds: Iterable[int],
    faults: Faults,
    name: str = "",
    replay: str = "run_schedule(scenario, {seed}, faults)",
    check_replay: int = 2,
    virtual: bool = True,
) -> ExploreReport:
    """Run ``scenario`` once per seed; raise :class:`ScheduleFailed` at the first
    schedule that fails. The first ``check_replay`` seeds are run twice and must give
    the same trace (a scenario that does not replay is reported as such; not checked
    on real time, where I/O timing takes part in the schedule)."""
    if not virtual:
        check_replay = 0
    report = ExploreReport(name or getattr(scenario, "__name__", "scenario"))
    started = time.perf_counter()
    workdir = _scratch()
    try:
        for index, seed in enumerate(seeds):
            schedule = run_schedule(scenario, seed, faults, directory=workdir, virtual=virtual)
            report.schedules += 1
            report.steps += schedule.steps
            report.faults += schedule.faults
            if schedule.error is not None:
                raise ScheduleFailed(report.name, schedule, replay)
            if index < check_replay:
                again = run_schedule(scenario, seed, faults, directory=workdir)
                if again.digest != schedule.digest:
                    raise ScheduleFailed(
                        report.name,
                        Schedule(
                            seed,
                            schedule.steps,
                            schedule.faults,
                            schedule.virtual_seconds,
                            schedule.trace,
                            DeadlockError(
                                "the schedule does not replay: a second run of the same "
                                "seed took other steps (something outside the explorer's "
                                "control: threads, real time, unseeded randomness)"
                            ),
                        ),
                        replay,
                    )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        report.seconds = time.perf_counter() - started
    return report
