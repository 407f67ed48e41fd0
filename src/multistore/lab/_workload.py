"""A register workload: concurrent workers reading and writing a few keys, recorded.

Workers share a budget of ``ops`` recorded operations spread evenly over ``duration``
seconds (operation ``i`` starts no earlier than ``i * duration / ops`` after the start,
so the faults of a schedule land in the middle of the traffic rather than after it).
Each picks, from its own seeded random stream, a key and one of

- ``read``: read the key;
- ``write``: write a fresh unique integer;
- ``rmw``: read the key, then write a fresh value passing the read's context (what the
  read saw), as a client doing read-modify-write does; recorded as a read and a write,
  the write invoked after the read completed, and counted as two operations.

With ``single_writer``, key ``k<i>`` is written only by worker ``i % concurrency``
(the others only read it; a worker that owns no key only reads), so the writes of a
key never overlap — what the PBS model assumes.

Each operation goes through a client: with ``routing="random"`` every operation
(both halves of an rmw together) goes through a client drawn at random, as requests
behind a load balancer do, so one process's reads reach different coordinators and
replicas (how monotonic-read violations show); with ``"sticky"`` worker ``i`` always
uses client ``i % len(clients)``.

Every operation is recorded by a :class:`~multistore.lab._history.HistoryRecorder`;
an operation that takes longer than ``op_timeout`` is cancelled and recorded as
indeterminate. :func:`final_reads` reads every key once more at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from multistore.core._history import EventType, Value
from multistore.errors import InvalidValueError
from multistore.lab._history import Completion, HistoryRecorder, Processes

__all__ = [
    "DEFAULT_MIX",
    "ROUTINGS",
    "Observed",
    "RegisterClient",
    "Workload",
    "final_reads",
    "parse_mix",
    "run_workload",
]

DEFAULT_MIX: Final = "read=0.5,write=0.3,rmw=0.2"
_KINDS: Final = ("read", "write", "rmw")
ROUTINGS: Final = ("random", "sticky")


@dataclass(frozen=True, slots=True)
class Observed:
    """What a read returned: the value (``None``: never written) and the store's
    context for a later write (``None`` if the store has none)."""

    value: Value
    context: object | None = None


class RegisterClient(Protocol):
    """One client of the store under test."""

    async def read(self, key: str) -> Observed: ...

    async def write(self, key: str, value: int, context: object | None = None) -> None:
        """Write ``value``; ``context`` is what a read of the key returned (rmw)."""


def parse_mix(text: str) -> dict[str, float]:
    """``"read=0.5,write=0.3,rmw=0.2"`` -> weights (any positive numbers; normalised)."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, number = part.partition("=")
        name = name.strip()
        if not sep or name not in _KINDS:
            raise InvalidValueError(f"bad mix entry {part!r}: expected read=, write= or rmw=")
        try:
            weight = float(number)
        except ValueError:
            raise InvalidValueError(f"bad weight in mix entry {part!r}") from None
        if not weight >= 0:
            raise InvalidValueError(f"mix weight must be >= 0 in {part!r}")
        weights[name] = weight
    total = sum(weights.values())
    if total <= 0:
        raise InvalidValueError(f"mix {text!r} has no positive weight")
    return {name: weights.get(name, 0.0) / total for name in _KINDS}


@dataclass(frozen=True, slots=True)
class Workload:
    ops: int = 600
    concurrency: int = 6
    duration: float = 4.0
    keys: int = 4
    mix: Mapping[str, float] | None = None
    seed: int = 0
    op_timeout: float = 5.0
    routing: str = "random"
    single_writer: bool = False

    def __post_init__(self) -> None:
        if self.ops < 1 or self.concurrency < 1 or self.keys < 1:
            raise InvalidValueError("ops, concurrency and keys must be at least 1")
        if not self.duration >= 0:
            raise InvalidValueError(f"duration must be >= 0, got {self.duration}")
        if not self.op_timeout > 0:
            raise InvalidValueError(f"op_timeout must be above 0, got {self.op_timeout}")
        if self.routing not in ROUTINGS:
            raise InvalidValueError(
                f"routing must be {' or '.join(ROUTINGS)}, got {self.routing!r}"
            )

    def key_names(self) -> list[str]:
        return [f"k{i}" for i in range(self.keys)]


async def run_workload(
    clients: Sequence[RegisterClient],
    recorder: HistoryRecorder,
    workload: Workload,
    *,
    on_operation: Callable[[Completion], None] | None = None,
) -> None:
    """Run the workload over ``clients`` (see the module docstring for routing);
    ``on_operation`` hears of every completed operation (progress)."""
    if not clients:
        raise InvalidValueError("the workload needs at least one client")
    mix = workload.mix or parse_mix(DEFAULT_MIX)
    kinds = [k for k in _KINDS if mix.get(k, 0.0) > 0]
    weights = [mix[k] for k in kinds]
    keys = workload.key_names()
    budget = itertools.count()
    values = itertools.count(1)
    processes = Processes(workload.concurrency)
    interval = workload.duration / workload.ops
    origin = time.monotonic()

    async def op(
        worker: int, client: RegisterClient, f: str, key: str, value: Value, context: object
    ) -> tuple[Completion, object]:
        seen: list[object] = [None]

        async def call() -> Value:
            if f == "read":
                got = await asyncio.wait_for(client.read(key), workload.op_timeout)
                seen[0] = got.context
                return got.value
            assert isinstance(value, int)
            await asyncio.wait_for(client.write(key, value, context), workload.op_timeout)
            return value

        done = await recorder.call(processes[worker], f, key, value, call)
        if done.type is EventType.INFO:
            processes.crashed(worker)
        if on_operation is not None:
            on_operation(done)
        return done, seen[0]

    async def paced() -> int | None:
        """The next operation's number, once its start time has come (None: done)."""
        i = next(budget)
        if i >= workload.ops:
            return None
        wait = origin + i * interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        return i

    async def worker(number: int) -> None:
        rng = random.Random(f"{workload.seed}:{number}")
        owned = keys[number :: workload.concurrency] if workload.single_writer else keys
        while await paced() is not None:
            kind = rng.choices(kinds, weights)[0]
            if kind != "read" and not owned:
                kind = "read"
            key = rng.choice(keys if kind == "read" else owned)
            if workload.routing == "random":
                client = clients[rng.randrange(len(clients))]
            else:
                client = clients[number % len(clients)]
            context: object = None
            if kind != "write":
                first, context = await op(number, client, "read", key, None, None)
                if kind == "read" or first.type is not EventType.OK:
                    continue
                if await paced() is None:  # the write would pass the budget
                    return
            await op(number, client, "write", key, next(values), context)

    await asyncio.gather(*(worker(n) for n in range(workload.concurrency)))


async def final_reads(
    client: RegisterClient,
    recorder: HistoryRecorder,
    workload: Workload,
    *,
    process: int,
    attempts: int = 1,
) -> None:
    """Read every key once more, sequentially, as process ``process`` (after the faults),
    trying a key up to ``attempts`` times until a read succeeds (every try is recorded)."""
    for key in workload.key_names():

        async def read(key: str = key) -> Value:
            got = await asyncio.wait_for(client.read(key), workload.op_timeout)
            return got.value

        for attempt in range(attempts):
            done = await recorder.call(process, "read", key, None, read)
            if done.type is EventType.OK:
                break
            if done.type is EventType.INFO:
                process += 1_000_000
            if attempt + 1 < attempts:
                await asyncio.sleep(0.05 * 2**attempt)  # back off before the next try
