"""Shared measuring code for the benchmarks: rows in the format of DESIGN.md.

Every benchmark module ``benchmarks/NAME.py`` defines ``async def run() -> list[Row]``.
:func:`compare` times our operation and the anchor's (the raw driver, or the
tool a user would pick instead) in the same process, alternating rounds after a
warm-up, and reports medians; ``speedup`` is anchor time / our time, so above 1
means multistore is faster. Only ratios from one run mean anything: the
machines are shared and noisy.
"""

from __future__ import annotations

import inspect
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BenchEnv", "Row", "compare", "compare_throughput"]


@dataclass(frozen=True)
class Row:
    name: str
    metric: str
    unit: str
    ours: float
    anchor: float
    anchor_name: str
    speedup: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _call(fn: Callable[[], object]) -> None:
    result = fn()
    if inspect.isawaitable(result):
        await result


async def _time_ops(fn: Callable[[], object], ops: int) -> float:
    start = time.perf_counter()
    for _ in range(ops):
        await _call(fn)
    return (time.perf_counter() - start) / ops


async def compare(
    name: str,
    ours: Callable[[], object],
    anchor: Callable[[], object],
    anchor_name: str,
    *,
    ops: int = 100,
    rounds: int = 15,
    warmup: int = 30,
) -> Row:
    """Median per-operation latency of ``ours`` vs ``anchor``, alternating rounds.
    Either may be sync or return an awaitable."""
    for _ in range(warmup):
        await _call(ours)
        await _call(anchor)
    ours_times: list[float] = []
    anchor_times: list[float] = []
    for i in range(rounds):
        # Alternate which side goes first so drift hurts both equally.
        if i % 2 == 0:
            ours_times.append(await _time_ops(ours, ops))
            anchor_times.append(await _time_ops(anchor, ops))
        else:
            anchor_times.append(await _time_ops(anchor, ops))
            ours_times.append(await _time_ops(ours, ops))
    ours_us = statistics.median(ours_times) * 1e6
    anchor_us = statistics.median(anchor_times) * 1e6
    return Row(
        name=name,
        metric="latency",
        unit="us/op",
        ours=round(ours_us, 2),
        anchor=round(anchor_us, 2),
        anchor_name=anchor_name,
        speedup=round(anchor_us / ours_us, 3) if ours_us > 0 else float("inf"),
    )


@dataclass
class BenchEnv:
    """Scratch space and throwaway servers for one benchmark run.

    ``await env.url("postgresql")`` starts the server on first use (from the
    lab's launchers) and returns the URL of a fresh database on it.
    """

    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="msbench-")))
    _servers: dict[str, Any] = field(default_factory=dict)

    def _server(self, kind: str) -> Any:
        from multistore.lab import servers

        if kind not in self._servers:
            factory = {
                "postgresql": servers.PostgresServer,
                "mariadb": servers.MariaDBServer,
                "redis": servers.RedisServer,
                "falkordb": servers.FalkorDBServer,
                "influxdb": servers.InfluxDBServer,
            }[kind]
            server = factory()
            server.start()
            self._servers[kind] = server
        return self._servers[kind]

    async def url(self, kind: str) -> str:
        server = self._server(kind)
        if kind in ("postgresql", "mariadb", "influxdb"):
            return str(server.create_database())
        if kind == "redis":
            server.flushall()
            return str(server.url())
        if kind == "falkordb":
            self._graphs = getattr(self, "_graphs", 0) + 1
            return str(server.url(graph=f"bench{self._graphs}"))
        raise KeyError(kind)

    def close(self) -> None:
        for server in self._servers.values():
            server.cleanup()
        self._servers.clear()


async def compare_throughput(
    name: str,
    ours: Callable[[], Awaitable[float]],
    anchor: Callable[[], Awaitable[float]],
    anchor_name: str,
    *,
    unit: str = "ops/s",
    rounds: int = 3,
) -> Row:
    """Median throughput of ``ours`` vs ``anchor``, alternating rounds.

    Each callable runs one timed round (after its own warm-up) and returns the
    operations completed per second; ``speedup`` is ours / anchor (above 1: ours
    is faster).
    """
    ours_rates: list[float] = []
    anchor_rates: list[float] = []
    for i in range(rounds):
        if i % 2 == 0:
            ours_rates.append(await ours())
            anchor_rates.append(await anchor())
        else:
            anchor_rates.append(await anchor())
            ours_rates.append(await ours())
    ours_rate = statistics.median(ours_rates)
    anchor_rate = statistics.median(anchor_rates)
    return Row(
        name=name,
        metric="throughput",
        unit=unit,
        ours=round(ours_rate, 1),
        anchor=round(anchor_rate, 1),
        anchor_name=anchor_name,
        speedup=round(ours_rate / anchor_rate, 3) if anchor_rate > 0 else float("inf"),
    )
