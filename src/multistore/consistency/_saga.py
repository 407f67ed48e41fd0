"""Saga definitions: ordered steps, each an async action with an optional compensation.

::

    order_saga = Saga(
        "order",
        [
            Step("create_order", create_order, compensate=cancel_order),
            Step("charge_payment", charge, compensate=refund, timeout=5.0),
            Step("reserve_inventory", reserve),
        ],
        timeout=60.0,
    )

A :class:`Parallel` group in the list runs its steps concurrently (and, when the saga
compensates, their compensations concurrently)::

    Step("create_order", create_order, compensate=cancel_order),
    Parallel("pay_and_reserve", [
        Step("charge_payment", charge, compensate=refund),
        Step("reserve_inventory", reserve, compensate=release),
    ]),
    Step("ship", ship),

An action and its compensation are ``async def fn(ctx: StepContext) -> JSON``. The
context carries the step's deterministic idempotency key (``"<saga id>:<step
name>"``), the saga input and the outputs of the steps before it, so a step that is
run again after a crash can find the effect of its earlier attempt.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from multistore.consistency._retry import COMPENSATION_RETRY, DEFAULT_RETRY, RetryPolicy
from multistore.core._saga import SagaState
from multistore.errors import (
    SagaError,
    SagaLeaseLostError,
    SagaTimeoutError,
    StepTimeoutError,
    UsageError,
)

__all__ = [
    "ErrorInfo",
    "Parallel",
    "Saga",
    "SagaError",
    "SagaLeaseLostError",
    "SagaResult",
    "SagaTimeoutError",
    "Step",
    "StepContext",
    "StepTimeoutError",
]

JSON = Any
VERSION_MAX = 64
StepFn = Callable[["StepContext"], Awaitable[JSON]]


@dataclass(frozen=True)
class StepContext:
    """What an action or compensation receives.

    ``idempotency_key`` is the same for every attempt of the step and for its
    compensation: make the effect idempotent with it (a unique column). ``results``
    holds the outputs of the completed steps before this one (replayed from the log
    after a crash). In a compensation, ``output`` is this step's own output if it
    completed (None if it failed or crashed half-way) and ``error`` its failure.
    """

    saga_id: str
    saga_name: str
    step: str
    idempotency_key: str
    input: JSON
    results: Mapping[str, JSON]
    attempt: int
    compensating: bool = False
    output: JSON = None
    error: ErrorInfo | None = None


@dataclass(frozen=True)
class Step:
    """One step: ``action``, optional ``compensate``, their retry policies and timeout."""

    name: str
    action: StepFn
    compensate: StepFn | None = None
    retry: RetryPolicy = DEFAULT_RETRY
    compensation_retry: RetryPolicy = COMPENSATION_RETRY
    timeout: float | None = None
    """Seconds for one attempt of the action or of the compensation (None: no limit)."""

    def __post_init__(self) -> None:
        if not self.name or ":" in self.name:
            raise UsageError(f"a step name must be non-empty and contain no ':', not {self.name!r}")
        if self.timeout is not None and self.timeout <= 0:
            raise UsageError(f"step {self.name!r}: timeout must be positive")


@dataclass(frozen=True)
class Parallel:
    """Steps that run concurrently, as one stage of a saga. Each member keeps its
    own compensation, retry policy and timeout. The group completes when every
    member completed; if a member fails for good the others still run to their end,
    then the saga compensates — every member that started, together — and the first
    failed member's error (in list order) is the saga's error."""

    name: str
    steps: Sequence[Step]

    def __post_init__(self) -> None:
        if not self.name:
            raise UsageError("a parallel group needs a name")
        if not self.steps:
            raise UsageError(f"parallel group {self.name!r} has no steps")
        if not all(isinstance(s, Step) for s in self.steps):
            raise UsageError(f"parallel group {self.name!r} holds only Step objects")
        object.__setattr__(self, "steps", tuple(self.steps))


@dataclass(frozen=True)
class Saga:
    """A named, ordered list of steps (a :class:`Parallel` group is one stage of
    concurrent steps), and an optional whole-saga timeout (seconds).

    ``version`` names this definition of the saga: a run is logged with the version
    that started it and only that version may resume it, so a changed definition
    gets a new version and workers keep the old one registered until its runs are
    finished (see docs/consistency/sagas.md, "Changing a saga").

    ``steps`` is the flat list of every step in order (a group's members in place);
    ``groups[i]`` numbers the stage of ``steps[i]``, so members of one group share it.
    """

    name: str
    steps: Sequence[Step | Parallel]
    timeout: float | None = None
    version: str = "1"
    groups: tuple[int, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if not self.name:
            raise UsageError("a saga needs a name")
        if not isinstance(self.version, str) or not 0 < len(self.version) <= VERSION_MAX:
            raise UsageError(
                f"saga {self.name!r}: version must be a string of 1 to {VERSION_MAX} "
                f"characters, not {self.version!r}"
            )
        if not self.steps:
            raise UsageError(f"saga {self.name!r} has no steps")
        flat: list[Step] = []
        groups: list[int] = []
        for stage, item in enumerate(self.steps):
            if isinstance(item, Parallel):
                flat.extend(item.steps)
                groups.extend([stage] * len(item.steps))
            elif isinstance(item, Step):
                flat.append(item)
                groups.append(stage)
            else:
                raise UsageError(
                    f"saga {self.name!r}: {item!r} is neither a Step nor a Parallel group"
                )
        names = [s.name for s in flat]
        if len(set(names)) != len(names):
            raise UsageError(f"saga {self.name!r} has two steps with the same name")
        if self.timeout is not None and self.timeout <= 0:
            raise UsageError(f"saga {self.name!r}: timeout must be positive")
        object.__setattr__(self, "steps", tuple(flat))
        object.__setattr__(self, "groups", tuple(groups))

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self.flat_steps]

    @property
    def flat_steps(self) -> tuple[Step, ...]:
        """Every step in order, a group's members in place (what ``steps`` holds)."""
        return cast(tuple[Step, ...], self.steps)


@dataclass(frozen=True)
class ErrorInfo:
    """An error as the log keeps it: its type name and message."""

    type: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        return cls(type(exc).__name__, str(exc))

    def to_json(self) -> str:
        return json.dumps({"type": self.type, "message": self.message})

    @classmethod
    def from_json(cls, text: str | None) -> ErrorInfo | None:
        if text is None:
            return None
        data = json.loads(text)
        return cls(str(data["type"]), str(data["message"]))

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


@dataclass(frozen=True)
class SagaResult:
    """Where a saga run stands: its state, the outputs of its completed steps, the
    business error that made it compensate (kept after a successful compensation)
    and the compensation error that left it stuck. ``blocked`` says why the last
    worker that took the saga could not run it (its definition does not match the
    log, …); a worker tries it again after its lease."""

    saga_id: str
    name: str
    state: SagaState
    outputs: Mapping[str, JSON] = field(default_factory=dict)
    error: ErrorInfo | None = None
    compensation_error: ErrorInfo | None = None
    version: str = "1"
    blocked: str | None = None

    @property
    def completed(self) -> bool:
        return self.state is SagaState.COMPLETED
