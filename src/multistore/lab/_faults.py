"""Fault injection on a schedule: kill and restart nodes, partition, slow, skew clocks.

A schedule is a tuple of :class:`Fault` values, each an action at a time (seconds
after the workload starts) on one node. :class:`FaultRunner` drives a schedule as an
asyncio task against a :class:`FaultTarget` — the adapter that knows how to do each
action to a given topology (a real Redis server is SIGKILLed and restarted, a
TCP proxy cut and restored; an embedded node is marked down) — records what it did
and when, and :meth:`FaultRunner.heal` undoes whatever is still in effect, so the
workload can end with a final read of every key on a healthy cluster.

Presets (:func:`preset_schedule`), each fault in the middle of the run and undone
before its end: ``none``, ``kill`` (one node), ``partition`` (one node cut off),
``latency`` (one node slowed), ``skew`` (one clock set ahead), ``chaos`` (a random
mix drawn from the seed).
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from multistore.errors import InvalidValueError

__all__ = [
    "FAULT_PRESETS",
    "Fault",
    "FaultKind",
    "FaultRunner",
    "FaultTarget",
    "SkewedClock",
    "preset_schedule",
]


class FaultKind(enum.Enum):
    KILL = "kill"
    RESTART = "restart"
    PARTITION = "partition"
    HEAL = "heal"
    DELAY = "delay"
    SKEW = "skew"


@dataclass(frozen=True, order=True, slots=True)
class Fault:
    """``kind`` applied to ``node`` at ``at`` seconds; ``amount`` is the delay in seconds
    (DELAY, 0 to stop) or the clock offset in milliseconds (SKEW, 0 to stop)."""

    at: float
    kind: FaultKind = field(compare=False)
    node: str = field(compare=False)
    amount: float = field(default=0.0, compare=False)

    def describe(self) -> str:
        if self.kind is FaultKind.DELAY:
            return f"delay {self.node} by {self.amount * 1000:g} ms"
        if self.kind is FaultKind.SKEW:
            return f"skew {self.node}'s clock by {self.amount:+g} ms"
        return f"{self.kind.value} {self.node}"


class FaultTarget(Protocol):
    """What a topology must offer for faults; ``node`` is a node (or clock) name."""

    async def kill(self, node: str) -> None: ...

    async def restart(self, node: str) -> None: ...

    async def partition(self, node: str) -> None: ...

    async def heal(self, node: str) -> None: ...

    async def delay(self, node: str, seconds: float) -> None: ...

    async def skew(self, node: str, ms: float) -> None: ...


class SkewedClock:
    """A wall clock (seconds, like :func:`time.time`) with an adjustable offset."""

    def __init__(self, base: Callable[[], float] = time.time) -> None:
        self._base = base
        self.offset_ms = 0.0

    def __call__(self) -> float:
        return self._base() + self.offset_ms / 1000.0


FAULT_PRESETS: Final = ("none", "kill", "partition", "latency", "skew", "chaos")


def preset_schedule(
    name: str,
    nodes: Sequence[str],
    duration: float,
    *,
    clock_node: str = "coordinator",
    seed: int = 0,
) -> tuple[Fault, ...]:
    """A named schedule over ``duration`` seconds; faults start at 20 % and end at 70 %."""
    if name not in FAULT_PRESETS:
        raise InvalidValueError(f"unknown fault preset {name!r}; choose from {FAULT_PRESETS}")
    if not nodes:
        raise InvalidValueError("a fault schedule needs at least one node")
    start, end = 0.2 * duration, 0.7 * duration
    victim = nodes[0]
    if name == "none":
        return ()
    if name == "kill":
        return (Fault(start, FaultKind.KILL, victim), Fault(end, FaultKind.RESTART, victim))
    if name == "partition":
        return (Fault(start, FaultKind.PARTITION, victim), Fault(end, FaultKind.HEAL, victim))
    if name == "latency":
        return (
            Fault(start, FaultKind.DELAY, victim, 0.05),
            Fault(end, FaultKind.DELAY, victim, 0.0),
        )
    if name == "skew":
        return (
            Fault(start, FaultKind.SKEW, clock_node, 10_000.0),
            Fault(end, FaultKind.SKEW, clock_node, 0.0),
        )
    return _chaos(nodes, duration, random.Random(seed))


def _chaos(nodes: Sequence[str], duration: float, rng: random.Random) -> tuple[Fault, ...]:
    """One fault at a time on a random node, each held for a random share of the run."""
    faults: list[Fault] = []
    t = 0.1 * duration
    undo = {
        FaultKind.KILL: FaultKind.RESTART,
        FaultKind.PARTITION: FaultKind.HEAL,
        FaultKind.DELAY: FaultKind.DELAY,
    }
    while t < 0.8 * duration:
        kind = rng.choice(list(undo))
        node = rng.choice(list(nodes))
        hold = rng.uniform(0.05, 0.2) * duration
        amount = rng.choice([0.01, 0.05, 0.1]) if kind is FaultKind.DELAY else 0.0
        faults.append(Fault(t, kind, node, amount))
        faults.append(Fault(min(t + hold, 0.85 * duration), undo[kind], node, 0.0))
        t += hold + rng.uniform(0.02, 0.1) * duration
    return tuple(faults)


class FaultRunner:
    """Applies a schedule to a target, logging each action with its time."""

    def __init__(
        self,
        schedule: Sequence[Fault],
        target: FaultTarget,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.schedule = tuple(sorted(schedule))
        self.target = target
        self._clock = clock
        self.log: list[dict[str, Any]] = []
        self._down: set[str] = set()
        self._cut: set[str] = set()
        self._slow: set[str] = set()
        self._skewed: set[str] = set()
        self._origin: float | None = None

    async def apply(self, fault: Fault, *, at: float | None = None) -> None:
        target, node = self.target, fault.node
        if fault.kind is FaultKind.KILL:
            await target.kill(node)
            self._down.add(node)
        elif fault.kind is FaultKind.RESTART:
            await target.restart(node)
            self._down.discard(node)
        elif fault.kind is FaultKind.PARTITION:
            await target.partition(node)
            self._cut.add(node)
        elif fault.kind is FaultKind.HEAL:
            await target.heal(node)
            self._cut.discard(node)
        elif fault.kind is FaultKind.DELAY:
            await target.delay(node, fault.amount)
            (self._slow.add if fault.amount else self._slow.discard)(node)
        else:
            await target.skew(node, fault.amount)
            (self._skewed.add if fault.amount else self._skewed.discard)(node)
        if at is None:
            at = fault.at if self._origin is None else self._clock() - self._origin
        self.log.append({"at_s": round(at, 3), "fault": fault.describe()})

    async def run(self) -> None:
        """Apply each fault at its time (relative to when ``run`` starts)."""
        origin = self._origin = self._clock()
        for fault in self.schedule:
            wait = origin + fault.at - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.apply(fault, at=self._clock() - origin)

    async def heal(self) -> None:
        """Undo every fault still in effect (restart, heal, no delay, no skew)."""
        for node in sorted(self._down):
            await self.apply(Fault(0.0, FaultKind.RESTART, node))
        for node in sorted(self._cut):
            await self.apply(Fault(0.0, FaultKind.HEAL, node))
        for node in sorted(self._slow):
            await self.apply(Fault(0.0, FaultKind.DELAY, node, 0.0))
        for node in sorted(self._skewed):
            await self.apply(Fault(0.0, FaultKind.SKEW, node, 0.0))
