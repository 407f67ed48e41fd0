"""Carts on multi-master nodes, merged with the seed's cart merge.

Every node accepts cart writes; a replicator exchanges the changes in the
background. Concurrent edits of one cart on two nodes are merged by
:func:`~multistore.core.merge_carts` (the union of the items, the larger quantity of
each), so no item a user added is lost; the price of that rule is that an item
removed on one node comes back while another node still had it.

A user's requests go to one node (picked from the user id) unless the request
names a node, so a user reads their own writes; the other node catches up within
a replication round.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from multistore.core import MergeFunction, merge_carts
from multistore.errors import InvalidValueError, MultistoreError
from multistore.replication import MemoryTransport, MultiMasterNode, Replicator
from multistore.service._instruments import Instruments

__all__ = ["Carts"]

log = logging.getLogger("multistore.service")


class Carts:
    def __init__(self, nodes: list[MultiMasterNode], *, instruments: Instruments) -> None:
        self.nodes = {node.node_id: node for node in nodes}
        self.order = [node.node_id for node in nodes]
        self.replicator = Replicator(nodes, MemoryTransport())
        self.instruments = instruments

    @classmethod
    async def open(cls, urls: Mapping[str, str], *, instruments: Instruments) -> Carts:
        nodes: list[MultiMasterNode] = []
        try:
            for node_id, url in urls.items():
                nodes.append(
                    await MultiMasterNode.open(url, node_id, resolver=MergeFunction(merge_carts))
                )
        except BaseException:
            for node in nodes:
                await node.close()
            raise
        return cls(nodes, instruments=instruments)

    async def close(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                await node.close()

    async def replicate(self, stop: asyncio.Event, interval: float) -> None:
        """Run replication rounds every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                with self.instruments.span("carts replication round"):
                    await self.replicator.round()
            except MultistoreError as exc:
                log.warning("cart replication round failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    def node_for(self, user_id: str, requested: str | None) -> MultiMasterNode:
        if requested is not None:
            node = self.nodes.get(requested)
            if node is None:
                raise InvalidValueError(
                    f"node: {requested!r} is not one of {', '.join(self.order)}"
                )
            return node
        digest = hashlib.sha256(user_id.encode()).digest()
        return self.nodes[self.order[digest[0] % len(self.order)]]

    async def get(self, user_id: str, node: MultiMasterNode) -> dict[str, Any]:
        with self.instruments.store_op("carts", "read"):
            read = await node.read_with_context(f"cart:{user_id}")
        items: dict[str, int] = {}
        for value in read.values:
            for sku, qty in value.get("items", {}).items():
                items[sku] = max(items.get(sku, 0), int(qty))
        return {
            "node": node.node_id,
            "items": {sku: qty for sku, qty in sorted(items.items()) if qty > 0},
        }

    async def set_item(
        self, user_id: str, node: MultiMasterNode, sku: str, qty: int
    ) -> dict[str, Any]:
        """Set the quantity of ``sku`` (0 removes it) on ``node``, based on what the
        node holds now (so a concurrent change that arrived meanwhile is kept)."""
        key = f"cart:{user_id}"
        with self.instruments.store_op("carts", "write"):
            read = await node.read_with_context(key)
            items: dict[str, int] = {}
            for value in read.values:
                items = merge_carts({"items": items}, value)["items"]
            if qty > 0:
                items[sku] = qty
            else:
                items.pop(sku, None)
            await node.put(key, {"items": dict(sorted(items.items()))}, context=read.context)
        return await self.get(user_id, node)

    async def status(self) -> dict[str, Any]:
        """Each node's log head, how many of each peer's changes it lacks, its conflicts."""
        report: dict[str, Any] = {}
        for node_id, node in self.nodes.items():
            report[node_id] = {
                "backend": node.store.backend,
                "log_head": node.head,
                # the peer's own changes this node has not taken yet
                "behind": {
                    peer: max(0, self.nodes[peer].seq - node.received_from(peer))
                    for peer in self.order
                    if peer != node_id
                },
                "conflicts": await node.conflict_count(),
            }
        return report
