"""Fault injection on a schedule: kill and restart nodes, partition, slow, skew clocks.

A schedule is a tuple of :class:`Fault` values, each an action at a time (seconds
after the workload starts) on one node. :class:`FaultRunner` drives a schedule as an
asyncio task against a :class:`FaultTarget` — the adapter that knows how to do each
action to a given topology (a real Redis server is SIGKILLed and restarted, a
TCP proxy cut and restored; an embedded node is marked down) — records what it did
and when, and :meth:`FaultRunner.heal` undoes whatever is still in effect, so the
workload can end with a final read of every key on a healthy cluster.

Presets (:func:`preset_schedule`, described in :data:`PRESET_HELP`), each fault in
the middle of the run (from 20 % to 70 % of it) and undone before its end.
:meth:`FaultRunner.windows` gives the time spans each fault was in effect.
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
    LOSE_REPLIES = "lose-replies"
    DELIVER_REPLIES = "deliver-replies"


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
        if self.kind is FaultKind.LOSE_REPLIES:
            return f"lose replies to {self.node} (requests still applied)"
        if self.kind is FaultKind.DELIVER_REPLIES:
            return f"deliver replies to {self.node} again"
        return f"{self.kind.value} {self.node}"


class FaultTarget(Protocol):
    """What a topology must offer for faults; ``node`` is a node (or clock) name."""

    async def kill(self, node: str) -> None: ...

    async def restart(self, node: str) -> None: ...

    async def partition(self, node: str) -> None: ...

    async def heal(self, node: str) -> None: ...

    async def delay(self, node: str, seconds: float) -> None: ...

    async def skew(self, node: str, ms: float) -> None: ...

    async def lose_replies(self, node: str, lose: bool) -> None:
        """Lose (or deliver again) every reply to ``node``, a coordinator; a node name
        loses that node's replies to every coordinator."""


class SkewedClock:
    """A wall clock (seconds, like :func:`time.time`) with an adjustable offset."""

    def __init__(self, base: Callable[[], float] = time.time) -> None:
        self._base = base
        self.offset_ms = 0.0

    def __call__(self) -> float:
        return self._base() + self.offset_ms / 1000.0


PRESET_HELP: Final = {
    "none": "no fault",
    "kill": "node0 crashes and comes back",
    "kill-homes": "two of the home nodes of key k0 crash and come back",
    "partition": "the network splits into {coordinator0, node0} and the rest",
    "lost-replies": "coordinator0's requests arrive and are applied, but every reply to it is lost",
    "latency": "node0 answers 50 ms late",
    "skew": "the last coordinator's clock runs 10 s ahead",
    "chaos": "a random sequence of kills, partitions and delays (from --seed)",
}
FAULT_PRESETS: Final = tuple(PRESET_HELP)


def preset_schedule(
    name: str,
    nodes: Sequence[str],
    duration: float,
    *,
    clock_node: str = "coordinator",
    seed: int = 0,
    homes: Sequence[str] = (),
    replies_of: str = "coordinator0",
) -> tuple[Fault, ...]:
    """A named schedule over ``duration`` seconds; faults start at 20 % and end at 70 %.

    ``homes``: the home nodes of a key, for ``kill-homes`` (the first two are killed;
    default: the first two nodes); ``replies_of``: whose replies ``lost-replies`` loses.
    """
    if name not in FAULT_PRESETS:
        raise InvalidValueError(
            f"unknown fault preset {name!r}; choose from {', '.join(FAULT_PRESETS)}"
        )
    if not nodes:
        raise InvalidValueError("a fault schedule needs at least one node")
    start, end = 0.2 * duration, 0.7 * duration
    victim = nodes[0]
    if name == "none":
        return ()
    if name == "kill":
        return (Fault(start, FaultKind.KILL, victim), Fault(end, FaultKind.RESTART, victim))
    if name == "kill-homes":
        two = list(homes or nodes)[:2]
        return (
            *(Fault(start, FaultKind.KILL, node) for node in two),
            *(Fault(end, FaultKind.RESTART, node) for node in two),
        )
    if name == "lost-replies":
        return (
            Fault(start, FaultKind.LOSE_REPLIES, replies_of),
            Fault(end, FaultKind.DELIVER_REPLIES, replies_of),
        )
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


_UNDO: Final = {
    FaultKind.KILL: FaultKind.RESTART,
    FaultKind.PARTITION: FaultKind.HEAL,
    FaultKind.LOSE_REPLIES: FaultKind.DELIVER_REPLIES,
}
_STARTS: Final = {undo: start for start, undo in _UNDO.items()}


class FaultRunner:
    """Applies a schedule to a target, logging each action with its time.

    ``clock`` gives seconds; the log's ``at_s`` is measured from ``origin`` (given to
    :meth:`run`, or the clock when it starts), so a caller can put faults on the same
    time line as its history.
    """

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
        self._active: dict[tuple[str, str], tuple[float, Fault]] = {}
        """(fault family, node) -> (start, the fault that started it), while in effect."""
        self._windows: list[dict[str, Any]] = []
        self._origin: float | None = None

    def _now(self) -> float:
        return self._clock() - (self._origin or 0.0)

    async def _act(self, fault: Fault) -> None:
        target, node = self.target, fault.node
        kind = fault.kind
        if kind is FaultKind.KILL:
            await target.kill(node)
        elif kind is FaultKind.RESTART:
            await target.restart(node)
        elif kind is FaultKind.PARTITION:
            await target.partition(node)
        elif kind is FaultKind.HEAL:
            await target.heal(node)
        elif kind is FaultKind.DELAY:
            await target.delay(node, fault.amount)
        elif kind is FaultKind.SKEW:
            await target.skew(node, fault.amount)
        else:
            await target.lose_replies(node, kind is FaultKind.LOSE_REPLIES)

    def _track(self, fault: Fault, at: float) -> None:
        """Open or close the fault's window."""
        kind = fault.kind
        family = _STARTS.get(kind, kind).value
        key = (family, fault.node)
        ends = kind in _STARTS or (kind in (FaultKind.DELAY, FaultKind.SKEW))
        opened = self._active.pop(key, None) if ends else None
        if opened is not None:
            start, first = opened
            self._windows.append(
                {"from_s": round(start, 3), "to_s": round(at, 3), "fault": first.describe()}
            )
        if kind in _UNDO or (kind in (FaultKind.DELAY, FaultKind.SKEW) and fault.amount):
            self._active[key] = (at, fault)

    async def apply(self, fault: Fault, *, at: float | None = None) -> None:
        await self._act(fault)
        if at is None:
            at = fault.at if self._origin is None else self._now()
        self._track(fault, at)
        self.log.append({"at_s": round(at, 3), "fault": fault.describe()})

    async def run(self, *, origin: float | None = None) -> None:
        """Apply each fault at its time after ``origin`` (default: now, on ``clock``)."""
        self._origin = self._clock() if origin is None else origin
        for fault in self.schedule:
            wait = self._origin + fault.at - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.apply(fault, at=self._now())

    @property
    def in_effect(self) -> list[str]:
        """The faults in effect now, described."""
        return [fault.describe() for _, fault in self._active.values()]

    def windows(self, *, until: float | None = None) -> list[dict[str, Any]]:
        """The spans (``from_s``, ``to_s``, ``fault``) each fault was in effect; one still
        in effect ends at ``until`` (default: now)."""
        end = self._now() if until is None else until
        still = [
            {"from_s": round(start, 3), "to_s": round(end, 3), "fault": fault.describe()}
            for start, fault in self._active.values()
        ]
        return sorted([*self._windows, *still], key=lambda w: w["from_s"])

    async def heal(self) -> None:
        """Undo every fault still in effect (restart, heal, deliver replies, no delay, no
        skew)."""
        order = ["kill", "partition", "lose-replies", "delay", "skew"]
        active = sorted(self._active.items(), key=lambda item: (order.index(item[0][0]), item[0]))
        for (_, node), (_, fault) in active:
            if fault.kind in _UNDO:
                await self.apply(Fault(0.0, _UNDO[fault.kind], node))
            else:
                await self.apply(Fault(0.0, fault.kind, node, 0.0))
