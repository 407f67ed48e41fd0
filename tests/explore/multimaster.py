"""Multi-master replication under the explorer: three nodes in one process, clients
adding elements to a few sets by read-modify-write (passing the read's context) on any
node while replication rounds run, a network that drops, duplicates, delays and
partitions messages, store calls that fail or lose their replies, the process crashing
and restarting, wall clocks that jump.

Two clients write at once, so two read-modify-writes often start from the same read.
The resolver merges concurrent sets by union, so nothing a client added may vanish.
Invariants once the network heals and the faults stop: every node holds the same
values for every key (convergence), and every element whose write was acknowledged is
in its key's set on every node (no lost update).
"""

from __future__ import annotations

import asyncio
from typing import Any

from multistore.core import MergeFunction
from multistore.errors import MultistoreError
from multistore.lab.explore import Actor, InvariantViolation, Simulation
from multistore.replication import MemoryTransport, MultiMasterNode, Replicator
from multistore.replication._replicator import Faults as NetworkFaults

NODES = ("a", "b", "c")
KEYS = ("s0", "s1")


def union(left: Any, right: Any) -> Any:
    live = [side for side in (left, right) if isinstance(side, list)]
    return sorted({item for side in live for item in side})


RESOLVER = MergeFunction(union)


async def _open_all(sim: Simulation) -> list[MultiMasterNode]:
    nodes: list[MultiMasterNode] = []
    try:
        for name in NODES:
            url = f"sqlite:///{sim.directory / name}.db"
            nodes.append(await MultiMasterNode.open(url, name, resolver=RESOLVER))
    except BaseException:
        for node in nodes:
            await node.close()
        raise
    return nodes


async def multimaster(sim: Simulation) -> None:
    for node in await _open_all(sim):
        await node.close()
    acknowledged: dict[str, set[str]] = {key: set() for key in KEYS}
    network = MemoryTransport(
        NetworkFaults(
            drop=sim.choices.choice((0.0, 0.1, 0.3)),
            duplicate=sim.choices.choice((0.0, 0.1)),
            max_delay=sim.choices.randint(0, 2),
            reorder=sim.choices.random() < 0.5,
        ),
        seed=sim.seed,
    )
    writes = sim.choices.randint(2, 6)
    issued = 0

    async def cluster(actor: Actor) -> None:
        nonlocal issued
        try:
            nodes = await _open_all(sim)
        except MultistoreError:
            return
        replicator = Replicator(nodes, network)

        async def client() -> None:
            nonlocal issued
            while issued < writes:
                issued += 1
                element = f"e{issued}.{actor.incarnation}"
                node = sim.choices.choice(nodes)
                key = sim.choices.choice(KEYS)
                try:
                    read = await actor.call(node.read_with_context(key))
                    merged = union(*read.values, [element]) if read.values else [element]
                    await actor.call(node.put(key, merged, context=read.context))
                except (MultistoreError, asyncio.CancelledError) as exc:
                    sim.note(f"{actor.label} add {element} to {key}: {type(exc).__name__}")
                    continue
                acknowledged[key].add(element)
                await asyncio.sleep(sim.choices.uniform(0, 0.2))

        async def replicate() -> None:
            for _ in range(sim.choices.randint(1, 6)):
                if sim.choices.random() < 0.2:
                    cut = sim.choices.choice(NODES)
                    network.partition([cut], [n for n in NODES if n != cut])
                elif sim.choices.random() < 0.3:
                    network.heal()
                try:
                    await actor.call(replicator.round())
                except (MultistoreError, asyncio.CancelledError) as exc:
                    sim.note(f"{actor.label} round: {type(exc).__name__}")
                await asyncio.sleep(sim.choices.uniform(0, 0.3))

        try:
            await asyncio.gather(client(), client(), replicate())
        finally:
            for node in nodes:
                await node.close()

    await sim.join(sim.spawn("cluster", cluster, restart=cluster, cancellable=False))
    sim.quiesce()
    network.heal()
    quiet = MemoryTransport()
    nodes = await _open_all(sim)
    try:
        await Replicator(nodes, quiet).sync(max_rounds=400)
        states = [await node.snapshot() for node in nodes]
        for node, state in zip(nodes[1:], states[1:], strict=True):
            if state != states[0]:
                raise InvariantViolation(
                    f"nodes differ after the network healed: {nodes[0].node_id}={states[0]} "
                    f"{node.node_id}={state}"
                )
        for key, elements in acknowledged.items():
            values = states[0].get(key, ())
            have = set(values[0]) if len(values) == 1 else set().union(*values)
            missing = elements - have
            if missing:
                raise InvariantViolation(
                    f"{key}: acknowledged additions {sorted(missing)} are gone ({values})"
                )
    finally:
        for node in nodes:
            await node.close()
