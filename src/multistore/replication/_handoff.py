"""Hinted handoff for the quorum coordinator.

A write whose home replica is down or fails keeps a *hint* in the durable
:class:`~multistore.replication._hints.HintStore` — "deliver this record to that
node" — and, in a sloppy quorum, a stand-in node holds a copy meanwhile. When the
home node answers a ping again, :func:`deliver_hints` writes each record to it
(through the same atomic last-writer-wins or merge write as any replica write)
and then hands back the stand-in's copy (see :func:`_hand_back`). Like Cassandra's
``max_hint_window``, hints are not kept for a node that has been failing for longer
than the window, and hints older than the window are dropped at delivery; both are
counted, and anti-entropy among the key's replicas repairs what they would have
carried; a hint the hint store fails to keep is dropped and counted the same way.
A stand-in is no replica of the key, so anti-entropy never looks at its
copy: a hint that names a stand-in is kept whatever the window, and one past the
window is dropped only once the stand-in's copy has been handed back to the home.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from multistore.errors import MultistoreError
from multistore.replication._qfanout import Fanout
from multistore.replication._qnodes import Record

if TYPE_CHECKING:
    from multistore.replication._quorum import QuorumCluster

__all__ = ["deliver_hints", "hint", "late_write_hinter", "record_hints"]


async def hint(
    cluster: QuorumCluster,
    home: str,
    group: bytes,
    member: bytes,
    hlc: str,
    blob: bytes,
    fallback: str,
) -> bool:
    """Keep a hint for ``home`` unless it has been failing for longer than the window
    (or left the cluster); a hint naming the ``fallback`` that holds a copy for the
    home is kept whatever the window (the only way to that copy)."""
    if home not in cluster.nodes:
        return False
    if not fallback and cluster.detector.down_for(home) > cluster.hint_window:
        cluster.stats.hints_dropped += 1
        return False
    try:
        await cluster.hints.add(home, group, member, hlc, blob, fallback, cluster.clock())
    except MultistoreError:
        if fallback:
            raise  # the only way back to the stand-in's copy: the caller must know
        # Best effort, as Cassandra's hints: the write's replicas have it (or it
        # failed anyway), and anti-entropy repairs what the hint would have carried.
        cluster.stats.hints_dropped += 1
        return False
    cluster.stats.hints_recorded += 1
    return True


async def record_hints(
    cluster: QuorumCluster, group: bytes, member: bytes, hlc: str, blob: bytes, fan: Fanout
) -> tuple[str, ...]:
    """Hints for the homes a write did not reach; returns the homes hinted."""
    hinted: list[str] = []
    # a stand-in still writing when W was reached holds a copy too (or will)
    holders = {home: fallback for fallback, home in fan.stand_in.items() if home}
    for home in fan.failed_homes:
        if home in fan.results:
            continue
        if await hint(cluster, home, group, member, hlc, blob, holders.get(home, "")):
            hinted.append(home)
    if holders:
        cluster.stats.sloppy_writes += 1
    return tuple(hinted)


def late_write_hinter(
    cluster: QuorumCluster, group: bytes, member: bytes, hlc: str, blob: bytes, node: str
) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback: a home write that fails after W was reached leaves a hint."""

    def done(call: asyncio.Future[Any]) -> None:
        if call.cancelled() or call.exception() is None or cluster.closed:
            return
        cluster.spawn(hint(cluster, node, group, member, hlc, blob, ""))

    return done


async def deliver_hints(cluster: QuorumCluster) -> int:
    """Hand pending hints to home nodes that answer; drop those past the window.

    Returns the number delivered.
    """
    delivered = 0
    for home in sorted(await cluster.hints.counts()):
        if home not in cluster.nodes:
            continue
        try:
            await cluster.call_node(home, lambda n: n.ping())
        except MultistoreError:
            continue
        after = 0
        while True:
            batch = await cluster.hints.pending(home, limit=200, after=after)
            if not batch:
                break
            after = batch[-1].id
            done: list[int] = []
            now = cluster.clock()
            try:
                for item in batch:
                    if now - item.created > cluster.hint_window:
                        # not delivered; but a stand-in's copy goes back to the home
                        # first, or the hint stays for a later round
                        if await _hand_back(
                            cluster, home, item.fallback, item.group, item.member, None
                        ):
                            done.append(item.id)
                            cluster.stats.hints_dropped += 1
                        continue
                    await cluster.call_node(
                        home,
                        lambda n, h=item: cluster.apply_record(  # type: ignore[misc]
                            n, h.group, h.member, h.hlc, h.blob
                        ),
                    )
                    done.append(item.id)
                    delivered += 1
                    cluster.stats.hints_delivered += 1
                    await _hand_back(
                        cluster, home, item.fallback, item.group, item.member, (item.hlc, item.blob)
                    )
            except MultistoreError:
                break  # the home failed again; the rest wait for the next round
            finally:
                await cluster.hints.remove(done)
    return delivered


async def _hand_back(
    cluster: QuorumCluster,
    home: str,
    fallback: str,
    group: bytes,
    member: bytes,
    hint: Record | None,
) -> bool:
    """Hand a stand-in's copy to ``home`` and remove it from the stand-in (unless the
    stand-in is a replica of the group); ``hint`` is the record just delivered to the
    home (None: nothing was). False when the stand-in failed; a failure of the home
    raises.

    The copy may be newer than ``hint`` (a later sloppy write landed on the same
    stand-in): it is written to the home first, and removed only if the stand-in still
    holds exactly what the home acknowledged, so a copy never goes before another
    replica holds it (or something newer) and no write drops below the copies it was
    acknowledged with. On a failure here the copy stays.
    """
    if not fallback or fallback in cluster.ring.preference_list(group, cluster.config.n):
        return True
    try:
        copy = await cluster.call_node(fallback, lambda n: n.read(group, member))
    except MultistoreError:
        return False
    if copy is None:
        return True
    if copy != hint:
        hlc, blob = copy
        await cluster.call_node(home, lambda n: cluster.apply_record(n, group, member, hlc, blob))
    try:
        await cluster.call_node(fallback, lambda n: n.remove(group, member, expected=copy))
    except MultistoreError:
        return False
    return True
