"""Multi-master replication under the explorer: three nodes in one process, clients
adding elements to a few sets by read-modify-write (passing the read's context) on any
node while replication rounds run, a network that drops, duplicates, delays and
partitions messages, store calls that fail or lose their replies, the process crashing
and restarting, wall clocks that jump.

Two clients write at once, so two read-modify-writes often start from the same read.
The resolver merges concurrent sets by union, so nothing a client added may vanish. In a
quarter of the schedules the nodes are CRDT nodes instead: the clients add to OR-sets,
and some writes go to one more key that two nodes may make a different CRDT (a set on
one, a counter on the other); such a change cannot be applied on the other node and is
set aside, which must not hold up the other keys (that key itself is not checked).
Invariants once the network heals and the faults stop: every node holds the same
values for every key (convergence), every element whose write was acknowledged is
in its key's set on every node (no lost update), and once every node has told the others
what it has, no change log keeps a row (the log is trimmed, so it stays bounded).
"""

from __future__ import annotations

import asyncio
from typing import Any

from multistore.core import CRDT, CRDTResolver, GCounter, MergeFunction, ORSet, Resolver
from multistore.errors import MultistoreError
from multistore.lab.explore import Actor, InvariantViolation, Simulation
from multistore.replication import MemoryTransport, MultiMasterNode, Replicator
from multistore.replication._replicator import Faults as NetworkFaults

NODES = ("a", "b", "c")
KEYS = ("s0", "s1")
CLASH = "clash"


def union(left: Any, right: Any) -> Any:
    live = [side for side in (left, right) if isinstance(side, list)]
    return sorted({item for side in live for item in side})


RESOLVER = MergeFunction(union)


async def _open_all(sim: Simulation, resolver: Resolver) -> list[MultiMasterNode]:
    nodes: list[MultiMasterNode] = []
    try:
        for name in NODES:
            url = f"sqlite:///{sim.directory / name}.db"
            nodes.append(await MultiMasterNode.open(url, name, resolver=resolver))
    except BaseException:
        for node in nodes:
            await node.close()
        raise
    return nodes


def _adder(element: str) -> Any:
    def add(state: Any) -> CRDT:
        return state.increment(1) if isinstance(state, GCounter) else state.add(element)

    return add


async def multimaster(sim: Simulation) -> None:
    crdt = sim.choices.random() < 0.25
    resolver: Resolver = CRDTResolver() if crdt else RESOLVER
    for node in await _open_all(sim, resolver):
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
            nodes = await _open_all(sim, resolver)
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
                made: Any = ORSet
                if crdt and sim.choices.random() < 0.25:
                    key = CLASH  # a set on some node, a counter on another: set aside
                    made = GCounter if sim.choices.random() < 0.5 else ORSet
                try:
                    if crdt:
                        await actor.call(node.update(key, _adder(element), made))
                    else:
                        read = await actor.call(node.read_with_context(key))
                        merged = union(*read.values, [element]) if read.values else [element]
                        await actor.call(node.put(key, merged, context=read.context))
                except (MultistoreError, asyncio.CancelledError) as exc:
                    sim.note(f"{actor.label} add {element} to {key}: {type(exc).__name__}")
                    continue
                if key in acknowledged:
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
    nodes = await _open_all(sim, resolver)
    try:
        healed = Replicator(nodes, quiet)
        await _sync(healed)
        await _check_trimmed(healed)
        states = [await node.snapshot() for node in nodes]
        for state in states:
            state.pop(CLASH, None)
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


async def _check_trimmed(replicator: Replicator) -> None:
    """Once every node has every change, a quiet round or two carries the acknowledgements
    and each node trims its log to nothing; an untrimmed log grows without bound."""
    sizes: dict[str, int] = {}
    for rounds in range(4):
        if rounds:
            await replicator.round()
        sizes = {node.node_id: await node.log_size() for node in replicator.nodes}
        if not any(sizes.values()):
            return
    raise InvariantViolation(
        f"change logs not trimmed once every peer acknowledged every change: {sizes}"
    )


async def _sync(replicator: Replicator) -> None:
    """Rounds until every node has every change. A change stamped by a clock that leapt
    ahead is held back by the receiving node's skew guard until its own clock gets there:
    wait (virtual time) rather than count that as lost."""
    rounds = 0
    while not replicator.caught_up():
        if rounds >= 400:
            nodes = replicator.nodes
            behind = [
                f"{b.node_id} has {a.node_id}:{b.received_from(a.node_id)}/{a.seq}"
                for a in nodes
                for b in nodes
                if b.received_from(a.node_id) < a.seq
            ]
            held = [f"{n.node_id} holds back {n.pending_count}" for n in nodes]
            raise InvariantViolation(
                f"not caught up after {rounds} rounds on a healed network: "
                + ", ".join(behind + held)
            )
        await replicator.round()
        rounds += 1
        if any(node.pending_count for node in replicator.nodes):
            await asyncio.sleep(5.0)
