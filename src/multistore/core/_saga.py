"""The saga state machine: states, transitions and the next move, with no I/O.

A saga is a fixed, ordered list of steps. Its durable record (:class:`SagaRecord`)
holds the saga's state and one :class:`StepRecord` per step. Every transition is a
pure function from one record to the next; the engine in
:mod:`multistore.consistency` writes each new record to its log *before* it acts on
it, and asks :func:`next_move` what to do, so a process that crashes anywhere
resumes from the log exactly where it stopped.

Saga states::

    PENDING ──begin──▶ RUNNING ──all steps completed──▶ COMPLETED
                          │ step failed for good, or the saga deadline passed
                          ▼
                     COMPENSATING ──every started step compensated──▶ COMPENSATED
                          │ a compensation failed past its retry policy
                          ▼
                        STUCK ──operator retries──▶ COMPENSATING
                          │ operator gives up on the compensation (undoes by hand)
                          ▼
                      CANCELLED

Parallel groups: consecutive steps may form a group (``groups[i]`` is step ``i``'s
group number; steps of one group share it). A group's members are started together,
run concurrently, and their outcomes are logged together
(:func:`group_finished`); when the saga compensates, the members of a group are
compensated together (:class:`CompensateGroup`), after every later step and before
every earlier one. A member that failed does not stop its siblings: each ends
completed or failed, and the group fails if any member did.

Step states: ``PENDING`` (not started), ``STARTED`` (its compensation is registered
and its action may have run, fully or in part), ``COMPLETED`` (output logged),
``FAILED`` (the action raised for good; it may still have half-succeeded),
``COMPENSATED``. A step is compensated when it left ``PENDING``: a step that
crashed or failed after its action began may have taken effect, so its
compensation runs too and must tolerate finding nothing to undo.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from multistore.errors import UsageError

__all__ = [
    "UNFINISHED_STATES",
    "Abort",
    "Compensate",
    "CompensateGroup",
    "Finish",
    "Halt",
    "Move",
    "RunGroup",
    "RunStep",
    "SagaRecord",
    "SagaState",
    "SagaTransitionError",
    "StepRecord",
    "StepState",
    "abort",
    "begin",
    "cancel_stuck",
    "compensation_attempted",
    "finish",
    "group_compensated",
    "group_finished",
    "new_saga",
    "next_move",
    "reopen_stuck",
    "step_compensated",
    "step_completed",
    "step_failed",
    "step_started",
    "stuck",
]


class SagaState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    STUCK = "stuck"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True for the end states: nothing will run without an operator."""
        return self in (
            SagaState.COMPLETED,
            SagaState.COMPENSATED,
            SagaState.STUCK,
            SagaState.CANCELLED,
        )


UNFINISHED_STATES = (SagaState.PENDING, SagaState.RUNNING, SagaState.COMPENSATING)


class StepState(enum.Enum):
    PENDING = "pending"
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATED = "compensated"


class SagaTransitionError(UsageError):
    """A transition that the state machine does not allow from the current state."""


@dataclass(frozen=True)
class StepRecord:
    """What the log knows about one step. ``output`` and ``error`` are JSON text."""

    name: str
    state: StepState = StepState.PENDING
    attempts: int = 0
    output: str | None = None
    error: str | None = None
    compensation_attempts: int = 0
    compensation_error: str | None = None


@dataclass(frozen=True)
class SagaRecord:
    """The durable record of one saga run.

    ``error`` is the business error that made the saga compensate (kept when the
    compensation succeeds); ``compensation_error`` is the error that left it stuck.
    ``deadline`` is in the engine's clock (seconds), or None for no saga timeout.
    ``version`` names the definition the saga was started with: only that version of
    the definition may run it.
    """

    saga_id: str
    name: str
    input: str
    state: SagaState
    steps: tuple[StepRecord, ...]
    error: str | None = None
    compensation_error: str | None = None
    deadline: float | None = None
    version: str = "1"

    def step_index(self, name: str) -> int:
        for i, step in enumerate(self.steps):
            if step.name == name:
                return i
        raise KeyError(name)


# -- the next move --------------------------------------------------------------


@dataclass(frozen=True)
class RunStep:
    """Run the action of step ``index`` (again, if it was started before a crash)."""

    index: int


@dataclass(frozen=True)
class Compensate:
    """Run the compensation of step ``index``."""

    index: int


@dataclass(frozen=True)
class Abort:
    """The saga ran past its deadline: record the timeout and compensate."""

    reason: str


@dataclass(frozen=True)
class Finish:
    """Nothing is left to run: move the saga to ``state``."""

    state: SagaState


@dataclass(frozen=True)
class Halt:
    """The saga is finished (or stuck): there is nothing to do."""

    state: SagaState


@dataclass(frozen=True)
class RunGroup:
    """Run the actions of the group members ``indices`` (those not completed yet)
    concurrently; ``first`` is the group's first step (results before it are what
    every member sees)."""

    indices: tuple[int, ...]
    first: int


@dataclass(frozen=True)
class CompensateGroup:
    """Run the compensations of the group members ``indices`` concurrently."""

    indices: tuple[int, ...]


Move = RunStep | RunGroup | Compensate | CompensateGroup | Abort | Finish | Halt


def next_move(
    saga: SagaRecord,
    compensable: Sequence[bool],
    now: float,
    groups: Sequence[int] | None = None,
) -> Move:
    """What the engine must do next, given the log, which steps have a compensation
    and (for parallel groups) each step's group number. ``now`` is compared with the
    saga deadline. A group with a single member left to do is still a
    :class:`RunGroup` / :class:`CompensateGroup`: its outcome is logged as a group's."""
    if len(compensable) != len(saga.steps) or (
        groups is not None and len(groups) != len(saga.steps)
    ):
        raise SagaTransitionError(
            f"saga {saga.saga_id!r} has {len(saga.steps)} steps in its log "
            f"but {len(compensable)} in its definition"
        )
    if saga.state.finished:
        return Halt(saga.state)
    if saga.state in (SagaState.PENDING, SagaState.RUNNING):
        if saga.deadline is not None and now >= saga.deadline:
            return Abort(f"saga {saga.saga_id!r} ran past its deadline")
        for i, step in enumerate(saga.steps):
            if step.state is not StepState.COMPLETED:
                members = _members(groups, i)
                if len(members) == 1:
                    return RunStep(i)
                todo = tuple(j for j in members if saga.steps[j].state is not StepState.COMPLETED)
                return RunGroup(todo, members[0])
        return Finish(SagaState.COMPLETED)
    # COMPENSATING: the latest started step first, back to the first one.
    for i in range(len(saga.steps) - 1, -1, -1):
        if compensable[i] and saga.steps[i].state in _TO_COMPENSATE:
            members = _members(groups, i)
            if len(members) == 1:
                return Compensate(i)
            return CompensateGroup(
                tuple(
                    j for j in members if compensable[j] and saga.steps[j].state in _TO_COMPENSATE
                )
            )
    return Finish(SagaState.COMPENSATED)


def _members(groups: Sequence[int] | None, index: int) -> tuple[int, ...]:
    """The steps in ``index``'s group (consecutive, in order); just ``index`` alone."""
    if groups is None:
        return (index,)
    group = groups[index]
    return tuple(i for i, g in enumerate(groups) if g == group)


_TO_COMPENSATE = (StepState.STARTED, StepState.COMPLETED, StepState.FAILED)


# -- transitions -----------------------------------------------------------------


def new_saga(
    saga_id: str,
    name: str,
    input: str,
    step_names: Sequence[str],
    deadline: float | None,
    version: str = "1",
) -> SagaRecord:
    """The record of a saga that was created and not started yet, by version
    ``version`` of its definition."""
    if len(set(step_names)) != len(step_names):
        raise SagaTransitionError(f"saga {name!r} has two steps with the same name")
    return SagaRecord(
        saga_id=saga_id,
        name=name,
        input=input,
        state=SagaState.PENDING,
        steps=tuple(StepRecord(n) for n in step_names),
        deadline=deadline,
        version=version,
    )


def begin(saga: SagaRecord) -> SagaRecord:
    _expect(saga, SagaState.PENDING, SagaState.RUNNING)
    return dataclasses.replace(saga, state=SagaState.RUNNING)


def step_started(saga: SagaRecord, index: int) -> SagaRecord:
    """Register the step's compensation and count one attempt of its action."""
    _expect(saga, SagaState.RUNNING)
    step = _step(saga, index, StepState.PENDING, StepState.STARTED)
    return _with_step(
        saga, index, dataclasses.replace(step, state=StepState.STARTED, attempts=step.attempts + 1)
    )


def step_completed(saga: SagaRecord, index: int, output: str) -> SagaRecord:
    _expect(saga, SagaState.RUNNING)
    step = _step(saga, index, StepState.STARTED)
    return _with_step(
        saga, index, dataclasses.replace(step, state=StepState.COMPLETED, output=output)
    )


def step_failed(saga: SagaRecord, index: int, error: str) -> SagaRecord:
    """The step's action failed for good: keep its error as the saga's error and
    start compensating."""
    _expect(saga, SagaState.RUNNING)
    step = _step(saga, index, StepState.STARTED)
    failed = _with_step(saga, index, dataclasses.replace(step, state=StepState.FAILED, error=error))
    return dataclasses.replace(failed, state=SagaState.COMPENSATING, error=error)


def group_finished(saga: SagaRecord, outputs: dict[int, str], errors: dict[int, str]) -> SagaRecord:
    """Log a group's outcome at once: each member in ``outputs`` completed (with its
    output), each in ``errors`` failed for good. If any failed, the saga compensates
    with the first failed member's error (in step order) as its error."""
    _expect(saga, SagaState.RUNNING)
    if outputs.keys() & errors.keys():
        raise SagaTransitionError("a group member cannot both complete and fail")
    for index, output in sorted(outputs.items()):
        saga = step_completed(saga, index, output)
    if not errors:
        return saga
    for index, error in sorted(errors.items()):
        step = _step(saga, index, StepState.STARTED)
        saga = _with_step(
            saga, index, dataclasses.replace(step, state=StepState.FAILED, error=error)
        )
    return dataclasses.replace(saga, state=SagaState.COMPENSATING, error=errors[min(errors)])


def group_compensated(saga: SagaRecord, done: Sequence[int], failed: dict[int, str]) -> SagaRecord:
    """Log a group's compensations at once: the members in ``done`` compensated;
    those in ``failed`` gave up (past their policy), which leaves the saga stuck with
    the first one's error."""
    _expect(saga, SagaState.COMPENSATING)
    for index in sorted(done):
        saga = step_compensated(saga, index)
    if not failed:
        return saga
    first = min(failed)
    for index, error in sorted(failed.items()):
        if index != first:
            saga = compensation_attempted(saga, index, error)
    return stuck(saga, first, failed[first])


def abort(saga: SagaRecord, error: str) -> SagaRecord:
    """Stop running steps (saga timeout) and start compensating."""
    _expect(saga, SagaState.PENDING, SagaState.RUNNING)
    return dataclasses.replace(saga, state=SagaState.COMPENSATING, error=error)


def compensation_attempted(saga: SagaRecord, index: int, error: str | None = None) -> SagaRecord:
    """Count one failed attempt of a compensation (with its error)."""
    _expect(saga, SagaState.COMPENSATING)
    step = _step(saga, index, *_TO_COMPENSATE)
    return _with_step(
        saga,
        index,
        dataclasses.replace(
            step,
            compensation_attempts=step.compensation_attempts + 1,
            compensation_error=error,
        ),
    )


def step_compensated(saga: SagaRecord, index: int) -> SagaRecord:
    _expect(saga, SagaState.COMPENSATING)
    step = _step(saga, index, *_TO_COMPENSATE)
    return _with_step(
        saga,
        index,
        dataclasses.replace(
            step,
            state=StepState.COMPENSATED,
            compensation_attempts=step.compensation_attempts + 1,
            compensation_error=None,
        ),
    )


def stuck(saga: SagaRecord, index: int, error: str) -> SagaRecord:
    """A compensation failed past its policy: leave the saga for an operator."""
    _expect(saga, SagaState.COMPENSATING)
    step = _step(saga, index, *_TO_COMPENSATE)
    marked = _with_step(
        saga,
        index,
        dataclasses.replace(
            step,
            compensation_attempts=step.compensation_attempts + 1,
            compensation_error=error,
        ),
    )
    return dataclasses.replace(marked, state=SagaState.STUCK, compensation_error=error)


def reopen_stuck(saga: SagaRecord) -> SagaRecord:
    """An operator retries a stuck saga: compensate again with fresh attempt counts."""
    _expect(saga, SagaState.STUCK)
    steps = tuple(
        dataclasses.replace(s, compensation_attempts=0) if s.state in _TO_COMPENSATE else s
        for s in saga.steps
    )
    return dataclasses.replace(
        saga, state=SagaState.COMPENSATING, steps=steps, compensation_error=None
    )


def cancel_stuck(saga: SagaRecord, error: str) -> SagaRecord:
    """An operator gives up on a stuck saga's compensation (what its steps left is
    theirs to undo by hand): it ends CANCELLED with its steps as they were, and
    ``error`` (the operator's reason, encoded by the engine) as its compensation
    error."""
    _expect(saga, SagaState.STUCK)
    return dataclasses.replace(saga, state=SagaState.CANCELLED, compensation_error=error)


def finish(saga: SagaRecord, state: SagaState) -> SagaRecord:
    if state is SagaState.COMPLETED:
        _expect(saga, SagaState.RUNNING)
        if any(s.state is not StepState.COMPLETED for s in saga.steps):
            raise SagaTransitionError(f"saga {saga.saga_id!r} has steps not completed")
    elif state is SagaState.COMPENSATED:
        _expect(saga, SagaState.COMPENSATING)
    else:
        raise SagaTransitionError(f"a saga cannot finish as {state.value}")
    return dataclasses.replace(saga, state=state)


def _expect(saga: SagaRecord, *states: SagaState) -> None:
    if saga.state not in states:
        allowed = " or ".join(s.value for s in states)
        raise SagaTransitionError(
            f"saga {saga.saga_id!r} is {saga.state.value}; this transition needs {allowed}"
        )


def _step(saga: SagaRecord, index: int, *states: StepState) -> StepRecord:
    if not 0 <= index < len(saga.steps):
        raise SagaTransitionError(f"saga {saga.saga_id!r} has no step {index}")
    step = saga.steps[index]
    if step.state not in states:
        allowed = " or ".join(s.value for s in states)
        raise SagaTransitionError(
            f"step {step.name!r} of saga {saga.saga_id!r} is {step.state.value}; "
            f"this transition needs {allowed}"
        )
    return step


def _with_step(saga: SagaRecord, index: int, step: StepRecord) -> SagaRecord:
    steps = (*saga.steps[:index], step, *saga.steps[index + 1 :])
    return dataclasses.replace(saga, steps=steps)
