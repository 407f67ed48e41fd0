"""The quorum store under the explorer: two coordinator processes writing and reading a
few keys on four embedded nodes (N=3, R=W=2), node calls that fail, time out after
applying or stall, coordinators that crash and restart, clocks that jump.

Invariants:
* no stale read: a read that succeeded returns a version at least as new (in the
  store's own order) as every write acknowledged before the read began;
* convergence: once hints are delivered and anti-entropy has run on every node, the
  N replicas of every key hold byte-identical records.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from multistore.core import QuorumConfig
from multistore.errors import MultistoreError
from multistore.lab.explore import Actor, InvariantViolation, Simulation
from multistore.replication import QuorumCluster

NODES = 4
CONFIG = QuorumConfig(n=3, r=2, w=2)
KEYS = ("k0", "k1")


@dataclass
class Op:
    kind: str
    actor: str
    key: str
    start: float
    end: float = 0.0
    ok: bool = False
    value: Any = None
    version: Any = None


async def _open(sim: Simulation, name: str, clock: Any) -> QuorumCluster:
    return await QuorumCluster.embedded(
        sim.directory,
        nodes=NODES,
        hints_path=sim.directory / f"hints-{name}.db",
        config=CONFIG,
        clock=clock,
        vnodes=8,  # fewer token ranges: anti-entropy's repair walks them one by one
    )


async def quorum(sim: Simulation) -> None:
    sim.messages = ("quorum-node",)
    setup = await _open(sim, "setup", sim.wall_time)
    await setup.close()
    history: list[Op] = []

    def coordinator(name: str) -> Actor:
        count = sim.choices.randint(2, 6)
        done = 0

        async def run(actor: Actor) -> None:
            nonlocal done
            try:
                cluster = await _open(sim, name, actor.wall_clock)
            except MultistoreError:
                return
            try:
                while done < count:
                    done += 1
                    key = sim.choices.choice(KEYS)
                    op = Op(
                        "write" if sim.choices.random() < 0.5 else "read",
                        name,
                        key,
                        sim.loop.time(),
                    )
                    history.append(op)
                    try:
                        if op.kind == "write":
                            op.value = f"{name}.{actor.incarnation}.{done}"
                            result = await actor.call(cluster.put(key, op.value))
                            op.version = result.version
                        else:
                            read = await actor.call(cluster.get(key))
                            op.value = read.values
                            op.version = max(read.versions, key=lambda v: v.hlc, default=None)
                        op.ok = True
                    except (MultistoreError, asyncio.CancelledError) as exc:
                        sim.note(f"{actor.label} {op.kind} {key}: {type(exc).__name__}")
                    op.end = sim.loop.time()
                    await asyncio.sleep(sim.choices.uniform(0, 0.5))
            finally:
                await cluster.close()

        return sim.spawn(name, run, restart=run)

    actors = [coordinator("c1"), coordinator("c2")]
    await sim.join(*actors)
    sim.quiesce()
    check_reads(history)
    # Heal: every coordinator's hints, then anti-entropy on every node.
    for name in ("c1", "c2"):
        cluster = await _open(sim, name, sim.wall_time)
        try:
            await cluster.deliver_hints()
        finally:
            await cluster.close()
    cluster = await _open(sim, "heal", sim.wall_time)
    try:
        await cluster.anti_entropy(depth=4)  # every pair of nodes
        for key in KEYS:
            homes = cluster.preference_list(key)
            records = {home: await cluster.node(home).read(key.encode()) for home in homes}
            if len(set(records.values())) > 1:
                raise InvariantViolation(
                    f"{key}: replicas differ after anti-entropy: "
                    + ", ".join(f"{h}={r[0] if r else None}" for h, r in records.items())
                )
    finally:
        await cluster.close()


def check_reads(history: list[Op]) -> None:
    writes = [op for op in history if op.kind == "write" and op.ok]
    for read in (op for op in history if op.kind == "read" and op.ok):
        before = [w for w in writes if w.key == read.key and w.end < read.start]
        if not before:
            continue
        newest = max(before, key=lambda w: w.version.hlc)
        if read.version is None or read.version.hlc < newest.version.hlc:
            raise InvariantViolation(
                f"stale read of {read.key} by {read.actor} at {read.start:.3f}: got "
                f"{read.value} although {newest.value!r} ({newest.actor}) was acknowledged at "
                f"{newest.end:.3f}"
            )
