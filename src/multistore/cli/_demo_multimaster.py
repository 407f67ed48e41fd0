"""Demo section "multi-master": one cart edited on two nodes during a partition.

:func:`multistore.service.partitioned_carts` runs the scenario on embedded nodes in
``<data dir>/demo-multimaster`` (cleared at the start): both nodes share a cart with
one apple; while partitioned, node a adds two pears and node b raises the apples to
three and adds milk; then they heal and sync. The table shows what each conflict
strategy keeps on both nodes.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from multistore.cli._demo import SectionReport
from multistore.cli._human import table
from multistore.config import Config
from multistore.service import partitioned_carts

STRATEGIES = [
    ("lww", "last writer wins"),
    ("merge", "merge function"),
    ("siblings", "keep siblings"),
    ("crdt_cart", "CRDT cart"),
]


def _items(value: Any) -> dict[str, Any]:
    """The cart's items: the JSON strategies keep ``{"items": {...}}``, the CRDT cart
    keeps the items themselves."""
    if isinstance(value, dict) and isinstance(value.get("items"), dict):
        return dict(value["items"])
    return dict(value) if isinstance(value, dict) else {}


def _cart(value: Any) -> str:
    items = _items(value)
    return "{" + ", ".join(f"{k} {v}" for k, v in sorted(items.items())) + "}"


async def multimaster_section(config: Config) -> SectionReport:
    """Multi-master: conflicting cart edits, four ways to resolve them."""
    report = SectionReport("multi-master: one cart, two nodes, a partition")
    folder = config.data_dir / "demo-multimaster"
    await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)
    result = await partitioned_carts(folder)

    edits = result["edits"]
    every_item = sorted(set(_items(edits["a"])) | set(_items(edits["b"])))
    shown = table("strategy", "both nodes keep", "lost", ">conflicts", "converged", lines=True)
    summary: dict[str, Any] = {}
    for name, label in STRATEGIES:
        outcome = result[name]
        kept = outcome["kept"]
        kept_text = "\n".join(
            (f"sibling {i}: " if len(kept) > 1 else "") + _cart(v) for i, v in enumerate(kept, 1)
        )
        lost = "\n".join(_cart(v) for v in outcome["lost_versions"]) or "nothing"
        kept_items = set().union(*(_items(v) for v in kept)) if kept else set()
        summary[name] = {
            "kept": kept,
            "siblings": len(kept),
            "kept_every_item": set(every_item) <= kept_items,
            "converged": outcome["converged"],
            "lost_versions": outcome["lost_versions"],
            "conflicts_recorded": outcome["conflicts_recorded"],
        }
        shown.add_row(
            label,
            kept_text,
            f"[red]{lost}[/]" if outcome["lost_versions"] else lost,
            str(outcome["conflicts_recorded"]),
            "yes" if outcome["converged"] else "[red]no[/]",
        )
    report.add(
        shown,
        "what each conflict strategy keeps after the partition heals",
        f"Before the partition both nodes held {_cart(edits['shared'])}. Cut off from each "
        f"other, node a saved {_cart(edits['a'])} and node b saved {_cart(edits['b'])}; "
        "then they synced. Last writer wins keeps one side whole and drops the other; a "
        "merge function (here: union of items, larger quantity) and the CRDT cart keep "
        "every item; siblings keep both versions for the application to merge.",
    )
    keep_all = [label for name, label in STRATEGIES if summary[name]["kept_every_item"]]
    report.proved = (
        f"{', '.join(keep_all)} kept every item of both edits; last writer wins lost one "
        "side, as it is meant to"
        + (
            "; every strategy left both nodes alike"
            if all(summary[name]["converged"] for name, _ in STRATEGIES)
            else "; [red]some nodes did not converge[/]"
        )
    )
    report.data.update(
        {"edits": edits, "every_item": every_item, "elapsed_s": result["elapsed_s"], **summary}
    )
    return report
