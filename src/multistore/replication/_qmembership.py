"""Membership changes of a quorum cluster: a node joins (bootstrap) or leaves
(decommission), as in Cassandra's bootstrap and Riak's ownership handoff.

Adding or removing a node changes the replicas of the token ranges next to its
virtual nodes (:meth:`~multistore.core._ring.HashRing.moves`). The ring switches
only once every moved range is on its new replicas:

1. The new ring becomes *pending*: every write that starts from now on also goes to
   the key's replicas on the new ring that are none on the current one, and is
   acknowledged only once W of its replicas on the current ring *and* W of its
   replicas on the new ring hold it (as Cassandra counts pending endpoints); else it
   fails, indeterminate (a new replica that failed gets a hint). So whichever ring a
   read uses, before or after the switch, it meets W replicas of the write.
2. The writes that started before, and so may have missed those nodes, are waited
   for.
3. Each moved range is streamed: every old replica of the range that answers lists
   its records (entry names and digests, as anti-entropy does); at least
   ``N - W + 1`` of them must answer, ``W`` being the cluster's write level, so every
   write acknowledged at that level is on one of them. Each record, merged across
   the old replicas that hold it, is written to the range's new replicas.
4. The hints of the new replicas are delivered: every one, or the change fails.
5. The ring switches; requests that start from now on use it.
6. The requests that started on the old ring are waited for, the hints their writes
   left for the new replicas delivered (:attr:`MembershipChange.hints_pending`
   counts what could not be), and — with ``cleanup`` — the nodes that no longer
   replicate a range forget its records (Cassandra's ``nodetool cleanup``).

A failure before step 5 leaves the ring as it was and raises a definite
:class:`QuorumError` (the change did not happen, whatever the error of the node that
made it fail said about that node's own write). One coordinator drives a change;
other coordinators on the same nodes must not write during it (their writes would not
reach the new replicas) and must be reopened with the new membership afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from multistore.core._ring import HashRing, Move
from multistore.errors import InvalidValueError, MultistoreError, Outcome
from multistore.replication._handoff import deliver_hints
from multistore.replication._qerrors import QuorumError
from multistore.replication._qfanout import Fanout
from multistore.replication._qnodes import QuorumNode, Record, parse_entry

if TYPE_CHECKING:
    from multistore.replication._quorum import QuorumCluster

__all__ = [
    "MembershipChange",
    "NewReplicas",
    "add_node",
    "check_new_replicas",
    "cleanup",
    "remove_node",
    "write_new_replicas",
]

_BATCH = 64
"""Records streamed concurrently."""


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """What one membership change moved."""

    action: Literal["join", "leave"]
    node: str
    nodes: tuple[str, ...]
    """The ring's nodes after the change."""
    ranges: int
    """Token ranges whose replicas changed."""
    records_streamed: int
    bytes_streamed: int
    records_removed: int
    """Records the nodes that no longer replicate a range forgot (cleanup)."""
    hints_pending: int
    """Hints for the new replicas that could not be delivered when the change ended
    (0 unless one of them failed during the change)."""


@dataclass(slots=True)
class NewReplicas:
    """What a write made during a membership change heard from its replicas on the
    pending ring (step 1 of the module docstring)."""

    homes: tuple[str, ...]
    """The write's replicas on the pending ring."""
    acked: set[str] = field(default_factory=set)
    """Those that hold it (acknowledged, as a current replica or as a gained one)."""
    failed: list[str] = field(default_factory=list)
    """Gained replicas (none on the current ring) whose write failed: hinted, unless the
    write failed definitely everywhere."""
    maybe_applied: bool = False
    """A failed write to a gained replica may have taken effect (not a definite refusal)."""


def check_new_replicas(
    cluster: QuorumCluster, pending: HashRing, group: bytes, need: int, pneed: int
) -> tuple[str, ...]:
    """The write's replicas on the pending ring; a definite :class:`QuorumError` (nothing
    sent) when fewer than the level needs are up, as the failure detector knows."""
    homes = tuple(pending.preference_list(group, cluster.config.n))
    up = sum(1 for name in homes if cluster.detector.available(name))
    if up < need or up < pneed:
        raise QuorumError(
            f"write of {group!r} not sent: a membership change is under way and fewer "
            f"than the {need} replicas it needs on the new ring are up",
            acks=(),
            required=need,
            outcome=Outcome.DEFINITE,
        )
    return homes


async def write_new_replicas(
    cluster: QuorumCluster,
    homes: tuple[str, ...],
    fan: Fanout,
    need: int,
    store: Callable[[QuorumNode], Awaitable[object]],
    *,
    single: bool,
) -> NewReplicas:
    """After the write's fan-out to its current replicas (``fan``): write it to its
    replicas on the pending ring that are none of those (``homes`` are all of them),
    and wait until each of those calls has ended and ``need`` of ``homes`` hold it —
    waiting, if need be, for current replicas that stay replicas and were still
    writing when the fan-out returned — or no call that could bring it there is left."""
    heard = NewReplicas(homes, {name for name in fan.results if name in homes})
    gained: dict[asyncio.Future[Any], str] = {
        asyncio.ensure_future(cluster.call_node(name, store, single=single)): name
        for name in homes
        if name not in fan.homes and name not in fan.results and name not in fan.pending.values()
    }
    staying: dict[asyncio.Future[Any], str] = {
        future: name for future, name in fan.pending.items() if name in homes
    }
    waiting = set(gained) | set(staying)
    try:
        while waiting and (len(heard.acked) < need or any(f in gained for f in waiting)):
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                error = None if future.cancelled() else future.exception()
                if future.cancelled() or error is not None:
                    if future in gained:
                        if error is not None and not isinstance(error, MultistoreError):
                            raise error
                        heard.maybe_applied |= not (
                            isinstance(error, MultistoreError) and error.definite
                        )
                        heard.failed.append(gained[future])
                    continue
                heard.acked.add(gained.get(future) or staying[future])
    finally:
        for future in gained:  # the caller gave up: the calls finish in the background
            if not future.done():
                cluster.track(future)
    return heard


async def add_node(
    cluster: QuorumCluster, node: QuorumNode, *, cleanup: bool = True
) -> MembershipChange:
    """Bootstrap ``node``; see the module docstring."""
    async with cluster.membership_lock:
        if node.name in cluster.ring:
            raise InvalidValueError(f"node {node.name!r} is already on the ring")
        ring = cluster.ring.add(node.name)
        cluster.join(node)
        return await _change(cluster, ring, "join", node.name, cleanup=cleanup)


async def remove_node(cluster: QuorumCluster, name: str) -> MembershipChange:
    """Decommission node ``name``; see the module docstring."""
    async with cluster.membership_lock:
        if name not in cluster.ring:
            raise InvalidValueError(f"node {name!r} is not on the ring ({cluster.nodes})")
        if len(cluster.ring) - 1 < cluster.config.n:
            raise InvalidValueError(
                f"removing {name!r} would leave {len(cluster.ring) - 1} nodes for "
                f"N={cluster.config.n} replicas"
            )
        ring = cluster.ring.remove(name)
        change = await _change(cluster, ring, "leave", name, cleanup=False)
        stale = await cluster.hints.pending(name, limit=1_000_000)
        await cluster.hints.remove([h.id for h in stale])  # its ranges moved already
        cluster.stats.hints_dropped += len(stale)
        return change


async def _change(
    cluster: QuorumCluster,
    ring: HashRing,
    action: Literal["join", "leave"],
    node: str,
    *,
    cleanup: bool,
) -> MembershipChange:
    moves = cluster.ring.moves(ring, cluster.config.n)
    gained = {name for move in moves for name in move.gained}
    cluster.pending_ring = ring
    try:
        await cluster.drain()
        streamed = [0, 0]
        for move in moves:
            if move.gained:
                await _stream(cluster, move, streamed)
        await _hand_over_hints(cluster, gained, strict=True)
    except BaseException as exc:
        cluster.pending_ring = None
        if action == "join":
            cluster.switch_ring(cluster.ring)  # retires the node that did not join
        if not isinstance(exc, MultistoreError) or (isinstance(exc, QuorumError) and exc.definite):
            raise
        # A node's error may be indeterminate (a write that timed out may still apply
        # there), but the change certainly did not happen: say that.
        raise QuorumError(
            f"{action} of {node!r} failed before the ring switched ({exc}); the ring is unchanged",
            acks=(),
            required=0,
            outcome=Outcome.DEFINITE,
        ) from exc
    cluster.switch_ring(ring)
    await cluster.drain()
    pending = await _hand_over_hints(cluster, gained, strict=False)
    removed = await _cleanup(cluster, moves) if cleanup else 0
    return MembershipChange(
        action, node, ring.nodes, len(moves), streamed[0], streamed[1], removed, pending
    )


async def _stream(cluster: QuorumCluster, move: Move, streamed: list[int]) -> None:
    """Copy the records of one moved range to the nodes that gain it."""
    listed: dict[str, dict[str, str]] = {}
    errors: list[str] = []
    for source in move.sources:
        try:
            entries = await cluster.call_node(source, lambda n: n.entries(move.lo, move.hi))
        except MultistoreError as exc:
            errors.append(f"{source}: {exc}")
            continue
        listed[source] = dict(entries)
    need = min(len(move.sources), cluster.config.n - cluster.config.write_count + 1)
    if len(listed) < need:
        raise QuorumError(
            f"cannot stream tokens {move.lo:#x}-{move.hi:#x}: {len(listed)} of its "
            f"replicas answered, {need} must ({'; '.join(errors)}); the ring is unchanged",
            acks=tuple(listed),
            required=need,
            outcome=Outcome.DEFINITE,
        )
    names = sorted({entry for entries in listed.values() for entry in entries})
    for start in range(0, len(names), _BATCH):
        sizes = await asyncio.gather(
            *(_copy(cluster, entry, listed, move.gained) for entry in names[start : start + _BATCH])
        )
        streamed[0] += sum(1 for size in sizes if size)
        streamed[1] += sum(sizes)


async def _copy(
    cluster: QuorumCluster, entry: str, listed: dict[str, dict[str, str]], targets: tuple[str, ...]
) -> int:
    """Write one record, merged across the sources that hold it, to ``targets``;
    returns the bytes written (0: nothing there any more)."""
    group, member = parse_entry(entry)
    digests = {source: entries[entry] for source, entries in listed.items() if entry in entries}
    sources = list(digests) if len(set(digests.values())) > 1 else list(digests)[:1]
    records: list[Record] = []
    for source in sources:
        record = await cluster.call_node(source, lambda n: n.read(group, member))
        if record is not None:
            records.append(record)
    if not records:
        return 0
    hlc, blob = cluster.target_record(records)
    for target in targets:
        await cluster.call_node(target, lambda n: cluster.apply_record(n, group, member, hlc, blob))
    return (len(hlc) + len(blob)) * len(targets)


async def _hand_over_hints(cluster: QuorumCluster, nodes: set[str], *, strict: bool) -> int:
    """Deliver the pending hints; the number left for ``nodes`` (with ``strict``, any
    left fail the change)."""
    await deliver_hints(cluster)
    counts = await cluster.hints.counts()
    left = sum(count for name, count in counts.items() if name in nodes)
    if left and strict:
        raise QuorumError(
            f"{left} hints for {sorted(n for n in nodes if counts.get(n))} could not be "
            "delivered; the ring is unchanged",
            acks=(),
            required=0,
            outcome=Outcome.DEFINITE,
        )
    return left


async def cleanup(cluster: QuorumCluster, before: HashRing) -> int:
    """Step 6's cleanup, run on its own after ``add_node(..., cleanup=False)`` returned:
    the nodes that replicated a range on ring ``before`` and no longer do forget its
    records. The number of records removed."""
    async with cluster.membership_lock:
        await cluster.drain()
        return await _cleanup(cluster, before.moves(cluster.ring, cluster.config.n))


async def _cleanup(cluster: QuorumCluster, moves: list[Move]) -> int:
    """Remove the records of moved ranges from the nodes that lost them (each only if
    it is still the record that was read: nothing written meanwhile is lost)."""
    removed = 0
    for move in moves:
        for name in move.lost:
            if name not in cluster.nodes:
                continue
            node = cluster.node(name)
            try:
                for entry, _ in await node.entries(move.lo, move.hi):
                    group, member = parse_entry(entry)
                    record = await node.read(group, member)
                    if record is not None and await node.remove(group, member, expected=record):
                        removed += 1
            except MultistoreError:
                continue  # a stray copy stays: no replica, never read in a strict quorum
    return removed
