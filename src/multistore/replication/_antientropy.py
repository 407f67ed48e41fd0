"""Merkle-tree anti-entropy between quorum replicas.

For each pair of nodes, the token ranges both replicate are taken from the ring.
Each node computes the Merkle leaf hashes of its records in those ranges *on the
node* (a Lua script on Redis) and sends only the hashes; the coordinator builds
the two trees (:class:`~multistore.core._merkle.MerkleTree`) and walks them from
the root down to the differing leaves. For those leaves only, both nodes list
``(record, digest)``; records whose digests differ are read from the side(s) that
hold them, merged (newest HLC, or sibling-set merge) and written to the side(s)
that lack the result. So the data streamed is proportional to the difference;
the hashes exchanged to find it are bounded by the number of leaves
(``2**depth``, chosen per repair: deeper trees narrow a small difference down to
fewer keys than Cassandra's fixed 2**15 leaves).

:class:`RepairReport` counts what was exchanged, so the claim can be checked.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from multistore.core._merkle import MerkleTree
from multistore.errors import InvalidValueError, MultistoreError
from multistore.replication._qnodes import QuorumNode, Record, parse_entry

if TYPE_CHECKING:
    from multistore.replication._quorum import QuorumCluster

__all__ = ["RepairReport", "anti_entropy"]

_TOKEN_BITS = 64


@dataclass(frozen=True, slots=True)
class RepairReport:
    """What one anti-entropy run compared and moved."""

    pairs: int
    """Node pairs compared."""
    ranges_compared: int
    leaves_differing: int
    keys_repaired: int
    tree_bytes: int
    """Bytes of leaf hashes sent by the nodes (bounded by the number of leaves)."""
    entry_bytes: int
    """Bytes of (record, digest) lists of the differing leaves."""
    stream_bytes: int
    """Bytes of records read from and written to nodes to repair them."""
    unreachable: tuple[str, ...] = ()


async def anti_entropy(
    cluster: QuorumCluster, node: str | None = None, *, depth: int = 12
) -> RepairReport:
    """Compare and repair ``node`` against every peer (or every pair of nodes)."""
    if type(depth) is not int or depth % 4 or not 0 <= depth <= 24:
        raise InvalidValueError(f"depth must be 0, 4, 8, … 24, got {depth!r}")
    names = cluster.nodes
    if node is not None:
        cluster.node(node)
        pairs = [(node, other) for other in names if other != node]
    else:
        pairs = list(itertools.combinations(names, 2))
    totals = {
        "pairs": 0,
        "ranges_compared": 0,
        "leaves_differing": 0,
        "keys_repaired": 0,
        "tree_bytes": 0,
        "entry_bytes": 0,
        "stream_bytes": 0,
    }
    unreachable: set[str] = set()
    for a, b in pairs:
        arcs = cluster.ring.shared_arcs(a, b, cluster.config.n)
        if not arcs:
            continue
        try:
            await _repair_pair(cluster, cluster.node(a), cluster.node(b), arcs, depth, totals)
        except MultistoreError:
            for name in (a, b):
                if cluster.detector.state(name) != "up":
                    unreachable.add(name)
            continue
        totals["pairs"] += 1
        totals["ranges_compared"] += len(arcs)
    report = RepairReport(**totals, unreachable=tuple(sorted(unreachable)))
    for key, value in asdict(report).items():
        if isinstance(value, int):
            cluster.stats.anti_entropy[key] = cluster.stats.anti_entropy.get(key, 0) + value
    cluster.stats.anti_entropy["runs"] = cluster.stats.anti_entropy.get("runs", 0) + 1
    return report


async def _repair_pair(
    cluster: QuorumCluster,
    a: QuorumNode,
    b: QuorumNode,
    arcs: list[tuple[int, int]],
    depth: int,
    totals: dict[str, int],
) -> None:
    leaves_a = await cluster.call_node(a.name, lambda n: n.leaf_hashes(arcs, depth))
    leaves_b = await cluster.call_node(b.name, lambda n: n.leaf_hashes(arcs, depth))
    totals["tree_bytes"] += sum(8 + len(h) for h in leaves_a.values())
    totals["tree_bytes"] += sum(8 + len(h) for h in leaves_b.values())
    differing = MerkleTree(depth, leaves_a).diff(MerkleTree(depth, leaves_b))
    totals["leaves_differing"] += len(differing)
    shift = _TOKEN_BITS - depth
    for leaf in differing:
        lo, hi = leaf << shift, ((leaf + 1) << shift) - 1
        for arc_lo, arc_hi in arcs:
            start, end = max(lo, arc_lo), min(hi, arc_hi)
            if start > end:
                continue
            entries_a = dict(await _entries(cluster, a, start, end))
            entries_b = dict(await _entries(cluster, b, start, end))
            for entries in (entries_a, entries_b):
                totals["entry_bytes"] += sum(len(k) + len(v) for k, v in entries.items())
            for entry in sorted(entries_a.keys() | entries_b.keys()):
                if entries_a.get(entry) == entries_b.get(entry):
                    continue
                group, member = parse_entry(entry)
                await _repair_record(cluster, a, b, group, member, totals)


async def _entries(
    cluster: QuorumCluster, node: QuorumNode, lo: int, hi: int
) -> list[tuple[str, str]]:
    return await cluster.call_node(node.name, lambda n: n.entries(lo, hi))


async def _repair_record(
    cluster: QuorumCluster,
    a: QuorumNode,
    b: QuorumNode,
    group: bytes,
    member: bytes,
    totals: dict[str, int],
) -> None:
    held: dict[str, Record | None] = {}
    for node in (a, b):
        record = await cluster.call_node(node.name, lambda n: n.read(group, member))
        held[node.name] = record
        if record is not None:
            totals["stream_bytes"] += len(record[0]) + len(record[1])
    records = [rec for rec in held.values() if rec is not None]
    if not records:
        return
    target = cluster.target_record(records)
    hlc, blob = target
    for node in (a, b):
        if held[node.name] != target:
            await cluster.call_node(
                node.name, lambda n: cluster.apply_record(n, group, member, hlc, blob)
            )
            totals["stream_bytes"] += len(hlc) + len(blob)
    totals["keys_repaired"] += 1
