"""The quorum store under the explorer: two coordinator processes writing and reading a
few keys on four embedded nodes (N=3, R=W=2), node calls that fail, time out after
applying or stall, coordinators that crash and restart, clocks that jump.

Besides blind writes and reads, a coordinator does read-modify-writes (a read, then a
write that passes the read's context), and now and then the first one adds a fifth
node (a bootstrap that streams the moved ranges; the other coordinator, as the docs
require, does not write meanwhile and opens the new membership afterwards). A quarter
of the schedules use a sloppy quorum (hints count toward W and R); in those, two nodes
may be down for a while (writes then land on the stand-in and one home), and the
coordinators deliver their hints during the run too. In a fifth of the strict schedules
two nodes' disks are full for a while (writes to them fail, reads still answer): a
write then lands on its third home only, and a read that meets it cannot repair it.
A tenth of the schedules read at R=1 and write at W=3.

Invariants:
* no stale read (strict quorums): a read that succeeded returns a version at least as
  new (in the store's own order) as every write acknowledged before the read began;
* monotonic reads (strict quorums, R=2): nor older than a read that returned before it
  began (a read returns a version only once R replicas hold it); at R=1 a read may meet
  a write still on its way and the next one miss it, so this is not checked there;
* reads spread (R=1): 20 reads of a key on the healed cluster are not all answered by
  the same home;
* a write with a context is stamped after every version its read returned;
* a write that failed definitely never took effect: no read returns its value;
* an acknowledged write stays on at least W nodes (its version or a newer one): checked
  after every hint delivery (a stand-in's copy goes only once a home holds it), after
  a membership change (the moved ranges were streamed before the switch) and at the end;
* no lost write: once hints are delivered and anti-entropy has run, a read at ALL
  returns, for every key, a version at least as new as every acknowledged write;
* convergence: the N replicas of every key then hold byte-identical records.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multistore.core import Consistency, QuorumConfig
from multistore.errors import MultistoreError, Outcome, StoreUnavailableError
from multistore.lab.explore import Actor, InvariantViolation, Simulation
from multistore.replication import HintStore, QuorumCluster, SQLiteNode
from multistore.replication._qnodes import Record

NODES = 4
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
    definite: bool = False
    """A write that failed with a definite error (it did not happen, and never will)."""
    read: list[Any] = field(default_factory=list)
    """For a read-modify-write: the versions its read returned."""


@dataclass
class Membership:
    """The nodes the coordinators open, and a change under way."""

    nodes: int = NODES
    changing: asyncio.Event | None = None
    busy: dict[str, int] = field(default_factory=dict)
    """Operations under way per coordinator (the admin waits until the others have none)."""


@dataclass
class Outage:
    """Nodes down (every call to them fails, their data kept) for the operations that
    start within ``[start, end)`` of virtual time."""

    nodes: tuple[str, ...] = ()
    start: float = 0.0
    end: float = 0.0

    def apply(self, cluster: Any, now: float) -> None:
        down = self.start <= now < self.end
        for name in self.nodes:
            if name in cluster.nodes:
                cluster.node(name).set_down(down)


class Copies:
    """Every node's record of each key, read outside the actors (no steps, no faults)."""

    def __init__(self, w: int) -> None:
        self.nodes: list[SQLiteNode] = []
        self.w = w

    async def open(self, sim: Simulation) -> None:
        for i in range(NODES + 1):  # node4 too, once it joins
            name = f"node{i}"
            self.nodes.append(await SQLiteNode(name, sim.directory / f"{name}.db").open())

    async def check(self, history: list[Op], when: str) -> None:
        """Every acknowledged write is on at least W nodes (its version or a newer one)."""
        w = self.w
        for key in KEYS:
            acked = [op for op in history if op.key == key and op.kind != "read" and op.ok]
            if not acked:
                continue
            records = {node.name: await node.read(key.encode()) for node in self.nodes}
            for op in acked:
                stamp = str(op.version.hlc)
                holders = [n for n, rec in records.items() if rec is not None and rec[0] >= stamp]
                if len(holders) < w:
                    raise InvariantViolation(
                        f"{key}: {op.value!r} ({op.actor}, acknowledged at {op.end:.3f}) is on "
                        f"{len(holders)} node(s) {holders} after {when}, fewer than W={w}"
                    )


@dataclass
class FullDisks:
    """Nodes whose disk is full within ``[start, end)`` of virtual time: every write to
    them fails before it is stored (reads still answer)."""

    nodes: tuple[str, ...] = ()
    start: float = 0.0
    end: float = 0.0
    sim: Simulation | None = None

    def check(self, name: str) -> None:
        if name in self.nodes and self.start <= asyncio.get_running_loop().time() < self.end:
            if self.sim is not None:
                self.sim.note(f"a write to {name} refused: its disk is full")
            raise StoreUnavailableError(
                f"explorer: quorum node {name}'s disk is full", outcome=Outcome.DEFINITE
            )


class ScenarioNode(SQLiteNode):
    """A SQLite node whose writes fail while its disk is full (:class:`FullDisks`)."""

    def __init__(self, name: str, path: Path, disks: FullDisks) -> None:
        super().__init__(name, path)
        self.disks = disks

    async def write_lww(self, group: bytes, member: bytes, hlc: str, blob: bytes) -> bool:
        self.disks.check(self.name)
        return await super().write_lww(group, member, hlc, blob)

    async def write_cas(
        self, group: bytes, member: bytes, hlc: str, blob: bytes, expected: Record | None
    ) -> bool:
        self.disks.check(self.name)
        return await super().write_cas(group, member, hlc, blob, expected)


async def _open(
    sim: Simulation,
    name: str,
    clock: Any,
    nodes: int,
    config: QuorumConfig,
    disks: FullDisks | None = None,
) -> Any:
    disks = disks or FullDisks()
    opened: list[SQLiteNode] = []
    try:
        for i in range(nodes):
            path = sim.directory / f"node{i}.db"
            opened.append(await ScenarioNode(f"node{i}", path, disks).open())
        hints = await HintStore.open(sim.directory / f"hints-{name}.db")
    except BaseException:
        for node in opened:
            await node.close()
        raise
    return QuorumCluster(
        opened,
        hints=hints,
        config=config,
        clock=clock,
        vnodes=8,  # fewer token ranges: anti-entropy's repair walks them one by one
    )


async def quorum(sim: Simulation) -> None:
    sim.messages = ("quorum-node",)
    sloppy = sim.choices.random() < 0.25
    # A tenth of the strict schedules read at R=1 (and write at W=3: R+W>N still).
    one = not sloppy and sim.choices.random() < 0.13
    # The strict quorum is the default: the scenario does not name it.
    if sloppy:
        config = QuorumConfig(n=3, r=2, w=2, sloppy=True)
    else:
        config = QuorumConfig(n=3, r=1, w=3) if one else QuorumConfig(n=3, r=2, w=2)
    join = sim.choices.random() < 0.3
    members = Membership()
    outage = Outage()
    if sloppy and sim.choices.random() < 0.5:
        start = sim.choices.uniform(0, 0.6)
        names = tuple(sim.choices.sample([f"node{i}" for i in range(NODES)], 2))
        outage = Outage(names, start, start + sim.choices.uniform(0.2, 1.5))
    setup = await _open(sim, "setup", sim.wall_time, NODES, config)
    await setup.close()
    disks = FullDisks()
    if not sloppy and sim.choices.random() < 0.2:
        start = sim.choices.uniform(0, 0.6)
        names = tuple(sim.choices.sample([f"node{i}" for i in range(NODES)], 2))
        disks = FullDisks(names, start, start + sim.choices.uniform(0.5, 2.0), sim)
    copies = Copies(config.write_count)
    await copies.open(sim)
    history: list[Op] = []

    def coordinator(name: str) -> Actor:
        count = sim.choices.randint(2, 6)
        done = 0

        async def run(actor: Actor) -> None:
            nonlocal done
            opened = members.nodes  # as it is when the open starts: a change may come first
            try:
                cluster = await _open(sim, name, actor.wall_clock, opened, config, disks)
            except MultistoreError:
                return
            try:
                while done < count:
                    done += 1
                    while members.changing is not None and name != "c1":
                        await members.changing.wait()  # no writes during a change
                    if opened != members.nodes:  # the membership changed: open it
                        await cluster.close()
                        opened = members.nodes
                        cluster = await _open(sim, name, actor.wall_clock, opened, config, disks)
                    outage.apply(cluster, sim.loop.time())
                    key = sim.choices.choice(KEYS)
                    draw = sim.choices.random()
                    if join and name == "c1" and members.nodes == NODES and draw < 0.15:
                        await _add_node(sim, actor, cluster, members)
                        opened = members.nodes
                        await copies.check(history, f"{actor.label}'s membership change")
                        continue
                    if sloppy and draw >= 0.85:
                        with contextlib.suppress(MultistoreError, asyncio.CancelledError):
                            await actor.call(cluster.deliver_hints())
                        await copies.check(history, f"{actor.label} delivered its hints")
                        continue
                    kind = "write" if draw < 0.4 else "rmw" if draw < 0.6 else "read"
                    op = Op(kind, name, key, sim.loop.time())
                    history.append(op)
                    members.busy[name] = members.busy.get(name, 0) + 1
                    try:
                        await _perform(actor, cluster, op, f"{name}.{actor.incarnation}.{done}")
                    except (MultistoreError, asyncio.CancelledError) as exc:
                        op.definite = isinstance(exc, MultistoreError) and exc.definite
                        sim.note(f"{actor.label} {op.kind} {key}: {type(exc).__name__}")
                    finally:
                        members.busy[name] -= 1
                    op.end = sim.loop.time()
                    await asyncio.sleep(sim.choices.uniform(0, 0.5))
            finally:
                await cluster.close()

        return sim.spawn(name, run, restart=run)

    actors = [coordinator("c1"), coordinator("c2")]
    await sim.join(*actors)
    for failed in sim.actors:  # a check an actor made on the way comes first
        if isinstance(failed.error, InvariantViolation):
            raise failed.error
    sim.quiesce()
    if not sloppy:  # a sloppy quorum may read around the writes, by design
        # at R=1 a read may meet a write still on its way, then the next one miss it
        check_reads(history, monotonic=not one)
    await copies.check(history, "the run")
    # Heal: every coordinator's hints, then anti-entropy on every node.
    for name in ("c1", "c2"):
        cluster = await _open(sim, name, sim.wall_time, members.nodes, config)
        try:
            await cluster.deliver_hints()
        finally:
            await cluster.close()
        await copies.check(history, f"{name}'s hints were delivered after the run")
    cluster = await _open(sim, "heal", sim.wall_time, members.nodes, config)
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
            if one:
                await check_spread(cluster, key)
            final = await cluster.get(key, r=Consistency.ALL)
            last = Op("read", "final", key, sim.loop.time(), ok=True, value=final.values)
            last.version = max(final.versions, key=lambda v: v.hlc, default=None)
            check_final(history, last)
    finally:
        await cluster.close()


async def _perform(actor: Actor, cluster: Any, op: Op, value: str) -> None:
    if op.kind == "read":
        read = await actor.call(cluster.get(op.key))
        op.value = read.values
        op.version = max(read.versions, key=lambda v: v.hlc, default=None)
    elif op.kind == "write":
        op.value = value
        op.version = (await actor.call(cluster.put(op.key, value))).version
    else:
        read = await actor.call(cluster.get(op.key))
        op.read = list(read.versions)
        op.value = value
        put = cluster.put(op.key, value, context=read.context)
        op.version = (await actor.call(put)).version
    op.ok = True


async def _add_node(sim: Simulation, actor: Actor, cluster: Any, members: Membership) -> None:
    """Bootstrap node4 once the other coordinator has no operation under way."""
    members.changing = asyncio.Event()
    try:
        for _ in range(200):
            if not any(n for name, n in members.busy.items() if name != "c1"):
                break
            await asyncio.sleep(0.05)
        name = f"node{NODES}"
        try:
            node = await SQLiteNode(name, sim.directory / f"{name}.db").open()
            await actor.call(cluster.add_node(node))
            sim.note(f"{actor.label} added {name}")
        except (MultistoreError, asyncio.CancelledError) as exc:
            sim.note(f"{actor.label} add {name}: {type(exc).__name__}")
        finally:
            # Whether the ring switched (the operator reads it in the admin's output):
            # a change that failed before the switch left the ring as it was.
            if name in cluster.ring:
                members.nodes = NODES + 1
    finally:
        changing, members.changing = members.changing, None
        changing.set()


def check_reads(history: list[Op], *, monotonic: bool = True) -> None:
    writes = [op for op in history if op.kind != "read" and op.ok]
    reads = [op for op in history if op.kind == "read" and op.ok]
    for read in reads:
        before = [w for w in writes if w.key == read.key and w.end < read.start]
        if before:
            newest = max(before, key=lambda w: w.version.hlc)
            if read.version is None or read.version.hlc < newest.version.hlc:
                raise InvariantViolation(
                    f"stale read of {read.key} by {read.actor} at {read.start:.3f}: got "
                    f"{read.value} although {newest.value!r} ({newest.actor}) was "
                    f"acknowledged at {newest.end:.3f}"
                )
        earlier = [r for r in reads if r.key == read.key and r.end < read.start and r.version]
        if earlier and monotonic:
            seen = max(earlier, key=lambda r: r.version.hlc)
            if read.version is None or read.version.hlc < seen.version.hlc:
                raise InvariantViolation(
                    f"non-monotonic reads of {read.key}: {read.actor} read {read.value} at "
                    f"{read.start:.3f}, after {seen.actor} had read the newer {seen.value} "
                    f"at {seen.end:.3f}"
                )
    for op in history:
        if op.kind == "rmw" and op.ok:
            behind = [v for v in op.read if not v.hlc < op.version.hlc]
            if behind:
                raise InvariantViolation(
                    f"{op.actor}'s read-modify-write of {op.key} ({op.value!r}) was stamped "
                    f"{op.version.hlc}, not after {behind[0].hlc} ({behind[0].value!r}) that "
                    "its read returned: it loses to what it read"
                )


async def check_spread(cluster: Any, key: str) -> None:
    """R=1 reads of a healthy cluster go to every home, not always to one: with each of
    the three homes first in turn at random, 20 reads all from one home happen once in
    3**19 (about 10**9) schedules."""
    first = {(await cluster.get(key)).replicas[0] for _ in range(20)}
    if len(first) < 2:
        raise InvariantViolation(
            f"{key}: 20 reads at R=1 all asked {first.pop()} of the homes "
            f"{cluster.preference_list(key)}: R=1 reads are not spread over the replicas"
        )


def check_final(history: list[Op], final: Op) -> None:
    """The read at ALL after healing: no acknowledged write lost, no definitely failed
    write applied (and no read returned one on the way)."""
    ops = [op for op in history if op.key == final.key]
    failed = {op.value for op in ops if op.kind != "read" and op.definite and op.value}
    for read in [*(op for op in ops if op.kind == "read" and op.ok), final]:
        seen = failed & set(read.value or ())
        if seen:
            raise InvariantViolation(
                f"{final.key}: a write reported as failed definitely took effect: "
                f"{read.actor} read {sorted(seen)}"
            )
    acked = [op for op in ops if op.kind != "read" and op.ok]
    if acked:
        newest = max(acked, key=lambda w: w.version.hlc)
        if final.version is None or final.version.hlc < newest.version.hlc:
            raise InvariantViolation(
                f"lost write of {final.key}: after healing, a read at ALL returns "
                f"{final.value} although {newest.value!r} ({newest.actor}) was acknowledged"
            )
