"""A register workload: concurrent workers reading and writing a few keys, recorded.

Workers share a budget of ``ops`` operations spread evenly over ``duration`` seconds
(operation ``i`` starts no earlier than ``i * duration / ops`` after the start, so the
faults of a schedule land in the middle of the traffic rather than after it). Each
picks, from its own seeded random stream, a key and one of

- ``read``: read the key;
- ``write``: write a fresh unique integer;
- ``rmw``: read the key, then write a fresh value (recorded as a read and a write,
  the write invoked after the read completed).

Every operation is recorded by a :class:`~multistore.lab._history.HistoryRecorder`;
an operation that takes longer than ``op_timeout`` is cancelled and recorded as
indeterminate. :func:`final_reads` reads every key once more at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from multistore.core._history import EventType, Value
from multistore.errors import InvalidValueError
from multistore.lab._history import Completion, HistoryRecorder, Processes

__all__ = [
    "DEFAULT_MIX",
    "RegisterClient",
    "Workload",
    "final_reads",
    "parse_mix",
    "run_workload",
]

DEFAULT_MIX: Final = "read=0.5,write=0.3,rmw=0.2"
_KINDS: Final = ("read", "write", "rmw")


class RegisterClient(Protocol):
    """One client of the store under test: ``None`` reads as "never written"."""

    async def read(self, key: str) -> Value: ...

    async def write(self, key: str, value: int) -> None: ...


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

    def __post_init__(self) -> None:
        if self.ops < 1 or self.concurrency < 1 or self.keys < 1:
            raise InvalidValueError("ops, concurrency and keys must be at least 1")
        if not self.duration >= 0:
            raise InvalidValueError(f"duration must be >= 0, got {self.duration}")

    def key_names(self) -> list[str]:
        return [f"k{i}" for i in range(self.keys)]


async def run_workload(
    clients: Sequence[RegisterClient], recorder: HistoryRecorder, workload: Workload
) -> None:
    """Run the workload; worker ``i`` talks to ``clients[i % len(clients)]``."""
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

    async def op(worker: int, f: str, key: str, value: Value) -> Completion:
        client = clients[worker % len(clients)]

        async def call() -> Value:
            if f == "read":
                return await asyncio.wait_for(client.read(key), workload.op_timeout)
            assert isinstance(value, int)
            await asyncio.wait_for(client.write(key, value), workload.op_timeout)
            return value

        done = await recorder.call(processes[worker], f, key, value, call)
        if done.type is EventType.INFO:
            processes.crashed(worker)
        return done

    async def worker(number: int) -> None:
        rng = random.Random(f"{workload.seed}:{number}")
        while (i := next(budget)) < workload.ops:
            wait = origin + i * interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            kind = rng.choices(kinds, weights)[0]
            key = rng.choice(keys)
            if kind == "read":
                await op(number, "read", key, None)
                continue
            if kind == "rmw":
                first = await op(number, "read", key, None)
                if first.type is not EventType.OK:
                    continue
            await op(number, "write", key, next(values))

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
            return await asyncio.wait_for(client.read(key), workload.op_timeout)

        for attempt in range(attempts):
            done = await recorder.call(process, "read", key, None, read)
            if done.type is EventType.OK:
                break
            if done.type is EventType.INFO:
                process += 1_000_000
            if attempt + 1 < attempts:
                await asyncio.sleep(0.05 * 2**attempt)  # back off before the next try
