"""The schedule explorer: the real protocol code under a seeded scheduler with faults.

Deterministic simulation, applied to multistore's own protocols. A *scenario* sets up
embedded stores, starts *actors* (processes: coordinators, recovery runs, workers,
relays, clients) that run the real code, waits for them and checks the protocol's
invariants. Every store call an actor makes is a step the scheduler orders and may
fault (crash, cancel, error, lost reply, stall, clock jump); time is virtual, so a
seed replays the same schedule. See :mod:`multistore.lab.explore._sim`.
"""

from multistore.lab.explore._loop import DeadlockError, VirtualTimeLoop
from multistore.lab.explore._run import (
    ExploreReport,
    Scenario,
    Schedule,
    ScheduleFailed,
    explore,
    run_schedule,
)
from multistore.lab.explore._sim import (
    Actor,
    ActorCrashed,
    ActorState,
    Faults,
    InvariantViolation,
    LivenessError,
    Simulation,
)

__all__ = [
    "Actor",
    "ActorCrashed",
    "ActorState",
    "DeadlockError",
    "ExploreReport",
    "Faults",
    "InvariantViolation",
    "LivenessError",
    "Scenario",
    "Schedule",
    "ScheduleFailed",
    "Simulation",
    "VirtualTimeLoop",
    "explore",
    "run_schedule",
]
