"""``multistore bench quorum``: quorum put/get over three Redis nodes vs one Redis SET/GET.

N=3 on M=3 Redis servers (each its own process), R/W = ONE, QUORUM and ALL. Ours is
:class:`QuorumCluster.put` / ``get`` (HLC + version vector, a JSON sibling set, a
Lua script per replica for an atomic last-writer-wins check, concurrent fan-out,
return at W or R answers); the anchor is one ``SET`` / ``GET`` through a bare
``redis.asyncio`` client on one of the same servers, alternating with ours. Rows:
median and p99 latency per operation, and throughput with 32 concurrent callers.
The target is QUORUM at most 1.5x a single-node operation: the fan-out is
concurrent, so its cost should be the second-fastest replica, not the sum.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from benchmarks._harness import Row, compare_throughput
from multistore.core._quorum import Consistency, QuorumConfig
from multistore.lab.servers import start_redis_cluster
from multistore.replication._quorum import QuorumCluster

VALUE = {"user_id": 123, "username": "alice", "roles": ["user", "premium"]}
RAW = b'{"user_id":123,"username":"alice","roles":["user","premium"]}'
OPS = 400
ROUNDS = 3


async def _latencies(fn: Callable[[], Awaitable[object]], ops: int) -> list[float]:
    times = []
    for _ in range(ops):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return times


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _latency_rows(
    name: str,
    ours: Callable[[], Awaitable[object]],
    anchor: Callable[[], Awaitable[object]],
    anchor_name: str,
) -> list[Row]:
    for _ in range(50):
        await ours()
        await anchor()
    ours_all: list[float] = []
    anchor_all: list[float] = []
    for i in range(ROUNDS):
        pair = [(ours, ours_all), (anchor, anchor_all)]
        for fn, bucket in pair if i % 2 == 0 else pair[::-1]:
            bucket += await _latencies(fn, OPS)
    rows = []
    for metric, pick in (("median latency", statistics.median), ("p99 latency", _p99)):
        ours_us = pick(ours_all) * 1e6
        anchor_us = pick(anchor_all) * 1e6
        rows.append(
            Row(
                name=name,
                metric=metric,
                unit="us/op",
                ours=round(ours_us, 2),
                anchor=round(anchor_us, 2),
                anchor_name=anchor_name,
                speedup=round(anchor_us / ours_us, 3),
            )
        )
    return rows


def _rate(
    fn: Callable[[], Awaitable[object]], callers: int = 32, per_caller: int = 40
) -> Callable[[], Awaitable[float]]:
    async def measure() -> float:
        async def caller() -> None:
            for _ in range(per_caller):
                await fn()

        await asyncio.gather(*(caller() for _ in range(callers // 4)))  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return callers * per_caller / (time.perf_counter() - start)

    return measure


async def run() -> list[Row]:
    servers = start_redis_cluster(3)
    try:
        cluster = await QuorumCluster.redis(
            [s.url() for s in servers], config=QuorumConfig(n=3), timeout=2.0
        )
        raw = aioredis.Redis.from_url(servers[0].url())
        rows: list[Row] = []
        try:
            await cluster.put("bench:key", VALUE)
            await raw.set("bench:key", RAW)
            for level in (Consistency.ONE, Consistency.QUORUM, Consistency.ALL):
                label = level.value.upper()
                rows += await _latency_rows(
                    f"quorum put, N=3 W={label}, 3 redis nodes",
                    lambda lv=level: cluster.put("bench:key", VALUE, w=lv),  # type: ignore[misc]
                    lambda: raw.set("bench:key", RAW),
                    "redis-py SET, one node",
                )
                rows += await _latency_rows(
                    f"quorum get, N=3 R={label}, 3 redis nodes",
                    lambda lv=level: cluster.get("bench:key", r=lv),  # type: ignore[misc]
                    lambda: raw.get("bench:key"),
                    "redis-py GET, one node",
                )
            rows.append(
                await compare_throughput(
                    "quorum put, N=3 W=QUORUM, 32 concurrent callers",
                    _rate(lambda: cluster.put("bench:key", VALUE)),
                    _rate(lambda: raw.set("bench:key", RAW)),
                    "redis-py SET, one node, 32 concurrent callers",
                )
            )
            rows.append(
                await compare_throughput(
                    "quorum get, N=3 R=QUORUM, 32 concurrent callers",
                    _rate(lambda: cluster.get("bench:key")),
                    _rate(lambda: raw.get("bench:key")),
                    "redis-py GET, one node, 32 concurrent callers",
                )
            )
        finally:
            await raw.aclose()
            await cluster.close()
        return rows
    finally:
        for server in servers:
            server.cleanup()
