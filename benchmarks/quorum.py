"""``multistore bench quorum``: quorum put/get over three Redis nodes vs one Redis SET/GET.

N=3 on M=3 Redis servers (each its own process), R/W = ONE, QUORUM and ALL. Ours is
:class:`QuorumCluster.put` / ``get`` (HLC + version vector, a JSON sibling set, a
Lua script per replica for an atomic last-writer-wins check, concurrent fan-out
over the lean RESP client of :mod:`multistore._resp`, return at W or R answers).
Each of our operations is timed in the same alternating rounds as two anchors, so
every ratio comes from one set of samples:

* ``redis-py SET`` / ``GET``, one node: one command through a
  ``redis.asyncio`` client with redis-py's defaults, on one of the same servers.
* a *bare concurrent fan-out* — the same commands sent to the three servers at
  once by plain redis-py (a task per server, no coordinator), returning at the
  W-th reply for a put (SET on all three) and when the R GETs a read sends have
  answered (to R of the replicas from a random one on, as our reads spread). Its
  clients are configured as our nodes' are (``socket_timeout=None``: redis-py's 5 s
  default wraps every send in ``asyncio.wait_for``, a task per command). The gap to
  it is our coordinator; its gap to the single command is what fanning out costs on
  this machine.

Rows: median and p99 latency per operation, and throughput with 32 concurrent
callers. The fan-out is concurrent, so a QUORUM operation should cost about the bare
fan-out, not the sum of its replicas. Measured numbers and what they mean are in
docs/replication/quorum.md ("What it costs"): on the shared, loaded 2-core development
machine (load 11-12), three runs gave QUORUM put 1.15x, 0.88x, 0.81x and QUORUM get
1.07x, 0.97x, 1.04x the bare fan-out (bare time / ours; redis-py with hiredis).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from benchmarks._harness import Row, compare_throughput
from multistore.core._quorum import Consistency, QuorumConfig, required
from multistore.lab.servers import start_redis_cluster
from multistore.replication._quorum import QuorumCluster

VALUE = {"user_id": 123, "username": "alice", "roles": ["user", "premium"]}
RAW = b'{"user_id":123,"username":"alice","roles":["user","premium"]}'
OPS = 40
ROUNDS = 30
"""Short rounds, many of them: the load of this shared machine drifts within a second, so
long blocks of one side (3 x 400, before) measured the sides under different loads and
moved the ratio by +-15% from run to run; 30 x 40 samples every side under the same."""
N = 3

Op = Callable[[], Awaitable[object]]


async def _latencies(fn: Op, ops: int) -> list[float]:
    times = []
    for _ in range(ops):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return times


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _latency_rows(name: str, ours: Op, anchors: Sequence[tuple[Op, str]]) -> list[Row]:
    """Ours and each anchor in alternating rounds; rows for every anchor (same samples)."""
    sides = [ours, *(fn for fn, _ in anchors)]
    for _ in range(50):
        for fn in sides:
            await fn()
    samples: list[list[float]] = [[] for _ in sides]
    for i in range(ROUNDS):
        order = list(range(len(sides)))
        for k in order if i % 2 == 0 else order[::-1]:
            samples[k] += await _latencies(sides[k], OPS)
    rows = []
    for (_, anchor_name), anchor_samples in zip(anchors, samples[1:], strict=True):
        for metric, pick in (("median latency", statistics.median), ("p99 latency", _p99)):
            ours_us = pick(samples[0]) * 1e6
            anchor_us = pick(anchor_samples) * 1e6
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


def _first(count: int, calls: Callable[[], list[Awaitable[Any]]]) -> Op:
    """Send ``calls()`` concurrently (a task each); return when ``count`` have answered."""

    async def fan() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        left = count

        def answered(_: asyncio.Future[Any]) -> None:
            nonlocal left
            left -= 1
            if left == 0 and not done.done():
                done.set_result(None)

        for call in calls():
            loop.create_task(call).add_done_callback(answered)  # type: ignore[arg-type]
        await done

    return fan


def _getter(clients: Sequence[aioredis.Redis], count: int) -> Callable[[], list[Awaitable[Any]]]:
    """GETs to ``count`` of the replicas, from a random one on, as our reads pick them
    (``read_from="random"``): reading the same replica every time would measure a
    hotspot that spread reads avoid, and a hot server answers faster on a busy machine."""

    def calls() -> list[Awaitable[Any]]:
        start = random.randrange(len(clients))
        return [clients[(start + i) % len(clients)].get("bench:key") for i in range(count)]

    return calls


def _rate(fn: Op, callers: int = 32, per_caller: int = 40) -> Callable[[], Awaitable[float]]:
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
    servers = start_redis_cluster(N)
    try:
        cluster = await QuorumCluster.redis(
            [s.url() for s in servers], config=QuorumConfig(n=N), timeout=2.0
        )
        raw = aioredis.Redis.from_url(servers[0].url())
        bare = [aioredis.Redis.from_url(s.url(), socket_timeout=None) for s in servers]
        rows: list[Row] = []
        try:
            await cluster.put("bench:key", VALUE)
            for client in (raw, *bare):
                await client.set("bench:key", RAW)
            for level in (Consistency.ONE, Consistency.QUORUM, Consistency.ALL):
                label = level.value.upper()
                count = required(level, N)
                sets = _first(count, lambda: [c.set("bench:key", RAW) for c in bare])
                gets = _first(count, _getter(bare, count))
                rows += await _latency_rows(
                    f"quorum put, N=3 W={label}, 3 redis nodes",
                    lambda lv=level: cluster.put("bench:key", VALUE, w=lv),  # type: ignore[misc]
                    [
                        (lambda: raw.set("bench:key", RAW), "redis-py SET, one node"),
                        (sets, f"bare fan-out: 3 concurrent redis-py SETs, return at {count}"),
                    ],
                )
                rows += await _latency_rows(
                    f"quorum get, N=3 R={label}, 3 redis nodes",
                    lambda lv=level: cluster.get("bench:key", r=lv),  # type: ignore[misc]
                    [
                        (lambda: raw.get("bench:key"), "redis-py GET, one node"),
                        (gets, f"bare fan-out: {count} concurrent redis-py GETs"),
                    ],
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
            for client in (raw, *bare):
                await client.aclose()
            await cluster.close()
        return rows
    finally:
        for server in servers:
            server.cleanup()
