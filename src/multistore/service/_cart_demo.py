"""The multi-master cart scenario of ``multistore demo``: one cart edited on two
nodes while they are partitioned, resolved by each conflict strategy.

Both nodes share a cart with one apple; while partitioned, node a adds two pears and
node b raises the apples to three and adds milk; then they heal and sync. The shop's
carts (``multistore serve``) use the merge function, the seed's cart merge.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from multistore.core import (
    LWW,
    Cart,
    CRDTResolver,
    KeepSiblings,
    MergeFunction,
    Resolver,
    merge_carts,
)
from multistore.replication import MemoryTransport, MultiMasterNode, Replicator

__all__ = ["partitioned_carts"]

_SHARED = {"items": {"apple": 1}}
_EDIT_A = {"items": {"apple": 1, "pear": 2}}
_EDIT_B = {"items": {"apple": 3, "milk": 1}}


async def _partitioned_carts(tmpdir: Path, name: str, resolver: Resolver) -> dict[str, Any]:
    """Two embedded nodes share a cart, edit it while partitioned, then heal."""
    transport = MemoryTransport()
    a = await MultiMasterNode.open(f"sqlite:///{tmpdir}/{name}-a.db", "a", resolver=resolver)
    try:
        b = await MultiMasterNode.open(f"sqlite:///{tmpdir}/{name}-b.db", "b", resolver=resolver)
        try:
            replicator = Replicator([a, b], transport)
            crdt = isinstance(resolver, CRDTResolver)
            if crdt:
                await a.update("cart", lambda cart: cart.add("apple", 1), Cart)
            else:
                await a.put("cart", _SHARED)
            await replicator.sync()
            transport.partition(["a"], ["b"])
            if crdt:
                await a.update("cart", lambda cart: cart.add("pear", 2), Cart)
                await b.update("cart", lambda cart: cart.add("apple", 2), Cart)
                await b.update("cart", lambda cart: cart.add("milk", 1), Cart)
            else:
                await a.put("cart", _EDIT_A)
                await b.put("cart", _EDIT_B)
            transport.heal()
            await replicator.sync()
            values_a, values_b = await a.values("cart"), await b.values("cart")
            conflicts = await a.conflicts("cart") + await b.conflicts("cart")
            lost = {
                json.dumps(loser.value, sort_keys=True): loser.value
                for record in conflicts
                for loser in record.losers
            }
            return {
                "strategy": repr(resolver),
                "kept": list(values_a),
                "converged": values_a == values_b,
                "conflicts_recorded": len(conflicts),
                "lost_versions": [lost[text] for text in sorted(lost)],
            }
        finally:
            await b.close()
    finally:
        await a.close()


async def partitioned_carts(tmpdir: str | Path) -> dict[str, Any]:
    """Two embedded nodes take conflicting cart edits while partitioned, then heal.

    Node a adds a pear, node b raises the apples to 3 and adds milk. The report
    shows, per strategy, what both nodes keep afterwards (``kept``: one value, or
    the siblings), the conflicts recorded and the versions that lost.
    """
    started = time.perf_counter()
    root = Path(tmpdir)
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "edits": {"shared": _SHARED, "a": _EDIT_A, "b": _EDIT_B},
        "lww": await _partitioned_carts(root, "lww", LWW()),
        "merge": await _partitioned_carts(root, "merge", MergeFunction(merge_carts)),
        "siblings": await _partitioned_carts(root, "siblings", KeepSiblings(limit=5)),
        "crdt_cart": await _partitioned_carts(root, "crdt", CRDTResolver()),
    }
    report["elapsed_s"] = round(time.perf_counter() - started, 3)
    return report
