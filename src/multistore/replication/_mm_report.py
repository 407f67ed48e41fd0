"""Multi-master status (for ``multistore status --json``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from multistore.replication._multimaster import MultiMasterNode

__all__ = ["multimaster_status"]


async def multimaster_status(nodes: Sequence[MultiMasterNode]) -> dict[str, Any]:
    """Each node's changes, what it has of every origin, what each peer has of it, its log
    size, and its conflict and held-back counts.

    ``missing`` (per peer) is how many changes this node has that the peer has not
    said it has — what replication still has to carry there.
    """
    report: dict[str, Any] = {}
    for node in nodes:
        mine = node.received
        peers: dict[str, Any] = {}
        for peer in sorted(set(node.peers) | {n.node_id for n in nodes} - {node.node_id}):
            has = node.peer_has(peer)
            peers[peer] = {
                "has": has.to_dict(),
                "missing": sum(max(0, n - has.get_count(o)) for o, n in mine.items()),
            }
        stats = node.statistics()
        report[node.node_id] = {
            "backend": node.store.backend,
            "strategy": repr(node.resolver),
            "own_changes": node.seq,
            "has": mine.to_dict(),
            "log_head": node.head,
            "log_rows": await node.log_size(),
            "peers": peers,
            "conflicts": await node.conflict_count(),
            "rejected_by_skew_guard": node.pending_count,
            "since_open": {
                "local_writes": stats.local_writes,
                "applied": stats.applied,
                "duplicates_skipped": stats.duplicates,
                "set_aside": stats.set_aside,
            },
        }
    return {"nodes": report}
