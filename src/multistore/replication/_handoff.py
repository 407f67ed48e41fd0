"""Hinted handoff for the quorum coordinator.

A write whose home replica is down or fails keeps a *hint* in the durable
:class:`~multistore.replication._hints.HintStore` — "deliver this record to that
node" — and, in a sloppy quorum, a stand-in node holds a copy meanwhile. When the
home node answers a ping again, :func:`deliver_hints` writes each record to it
(through the same atomic last-writer-wins or merge write as any replica write)
and removes the stand-in's copy. Like Cassandra's ``max_hint_window``, hints are
not kept for a node that has been failing for longer than the window, and hints
older than the window are dropped at delivery; both are counted, and
anti-entropy repairs what they would have carried.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from multistore.errors import MultistoreError
from multistore.replication._qfanout import Fanout

if TYPE_CHECKING:
    from multistore.replication._quorum import QuorumCluster

__all__ = ["deliver_hints", "late_write_hinter", "record_hints"]


async def hint(
    cluster: QuorumCluster,
    home: str,
    group: bytes,
    member: bytes,
    hlc: str,
    blob: bytes,
    fallback: str,
) -> bool:
    """Keep a hint for ``home`` unless it has been failing for longer than the window."""
    if cluster.detector.down_for(home) > cluster.hint_window:
        cluster.stats.hints_dropped += 1
        return False
    await cluster.hints.add(home, group, member, hlc, blob, fallback, cluster.clock())
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
        while True:
            batch = await cluster.hints.pending(home, limit=200)
            if not batch:
                break
            done: list[int] = []
            now = cluster.clock()
            try:
                for item in batch:
                    if now - item.created > cluster.hint_window:
                        cluster.stats.hints_dropped += 1
                    else:
                        await cluster.call_node(
                            home,
                            lambda n, h=item: cluster.apply_record(  # type: ignore[misc]
                                n, h.group, h.member, h.hlc, h.blob
                            ),
                        )
                        delivered += 1
                        cluster.stats.hints_delivered += 1
                        await _forget_copy(cluster, item.fallback, item.group, item.member)
                    done.append(item.id)
            except MultistoreError:
                break  # the home failed again; the rest wait for the next round
            finally:
                await cluster.hints.remove(done)
    return delivered


async def _forget_copy(cluster: QuorumCluster, fallback: str, group: bytes, member: bytes) -> None:
    """Remove a stand-in's copy once its home has the record (if it is not a replica)."""
    if not fallback or fallback in cluster.ring.preference_list(group, cluster.config.n):
        return
    # on failure, anti-entropy and later hand-offs cope with a stray copy
    with contextlib.suppress(MultistoreError):
        await cluster.call_node(fallback, lambda n: n.remove(group, member))
