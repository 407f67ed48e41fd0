"""Demo section "two-phase commit": the shop's order across three databases, and a
coordinator crash that recovery finishes.

The shop's orders, payments and inventory databases (the same tables and the same
transaction as ``multistore serve`` with ``"mode": "2pc"``) are SQLite files in
``<data dir>/demo-2pc`` (cleared at the start); the decision log is the
``transactions`` role's store. Order 123 commits normally. For order 124 the
coordinator "crashes" right after its commit decision reached the log (the
coordinator's event hook raises at ``decided``, the supported way to stop it at a
protocol point in-process): every branch is left prepared, in doubt, and nothing of
the order is visible yet. :func:`recover_transactions` then finds the commit record
and commits the branches. The coordinator's node id carries a per-run suffix, so a
shared decision log never mixes this run's transactions with another's.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path
from typing import Any

from multistore.cli._demo import SectionReport
from multistore.cli._human import table
from multistore.config import Config
from multistore.consistency import TransactionCoordinator, open_participant, recover_transactions
from multistore.core import Xid
from multistore.service import (
    OrderLine,
    create_tables,
    order_input,
    place_order_atomically,
    stock_products,
)
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore

PARTICIPANTS = ("orders", "payments", "inventory")
QUERIES = {
    "orders": "SELECT id, total_cents FROM shop_orders ORDER BY id",
    "payments": "SELECT order_id, amount_cents FROM shop_payments ORDER BY order_id",
    "inventory": "SELECT sku, stock FROM shop_stock ORDER BY sku",
}
PRICES = {"product1": 4999, "product2": 5000}


class CoordinatorCrash(BaseException):
    """Stands in for the coordinator process dying (a BaseException, as a kill would
    not run any ``except Exception`` cleanup either)."""


async def _in_doubt(urls: dict[str, str]) -> dict[str, list[str]]:
    """Per participant, the prepared branches nobody has resolved yet."""
    found: dict[str, list[str]] = {}
    for name, url in urls.items():
        participant = await open_participant(name, url)
        try:
            found[name] = [str(xid) for xid in await participant.in_doubt()]
        finally:
            await participant.close()
    return found


async def _rows(urls: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    for name, url in urls.items():
        store = await open_store(url, model="relational")
        assert isinstance(store, RelationalStore)
        async with store:
            rows[name] = [dict(r) for r in await store.fetch_all(QUERIES[name])]
    return rows


def _rows_text(name: str, rows: list[dict[str, Any]]) -> str:
    if name == "orders":
        text = [f"{r['id']}: {r['total_cents'] / 100:.2f}" for r in rows]
    elif name == "payments":
        text = [f"{r['order_id']}: {r['amount_cents'] / 100:.2f}" for r in rows]
    else:
        text = [f"{r['sku']}: {r['stock']}" for r in rows]
    return "\n".join(text) or "(no rows)"


def _short(branch: str) -> str:
    """A branch id without its 32-digit transaction id in the middle, for the table."""
    xid = Xid.parse(branch)
    return f"{xid.tid[:8]}…:{xid.branch}"


async def twopc_section(config: Config) -> SectionReport:
    """Two-phase commit: a committed order, a coordinator crash, recovery."""
    report = SectionReport("two-phase commit: order + payment + stock, all or nothing")
    folder = config.data_dir / "demo-2pc"
    await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)
    await asyncio.to_thread(Path.mkdir, folder, parents=True)
    urls = {name: f"sqlite:///{folder / name}.db" for name in PARTICIPANTS}
    log = config.role("transactions").url
    node = f"demo-{uuid.uuid4().hex[:8]}"
    crash = {"armed": False}

    def on_event(event: str, xid: Xid, name: str) -> None:
        if crash["armed"] and event == "decided":
            raise CoordinatorCrash

    coordinator = await TransactionCoordinator.open(urls, log=log, node=node, on_event=on_event)
    try:
        await create_tables(coordinator)
        await stock_products(coordinator, {sku: (price, 5) for sku, price in PRICES.items()})
        lines = [OrderLine(sku, 1, price) for sku, price in PRICES.items()]
        committed = await place_order_atomically(
            coordinator, order_input("ord_123", "alice", lines)
        )
        first_votes = {k: v.value if v else None for k, v in committed.votes.items()}
        first = {"order_id": "ord_123", "state": committed.state.value, "votes": first_votes}
        crash["armed"] = True
        crashed = False
        try:
            await place_order_atomically(
                coordinator,
                order_input("ord_124", "alice", [OrderLine("product1", 1, PRICES["product1"])]),
            )
        except CoordinatorCrash:
            crashed = True
        if not crashed:  # pragma: no cover - the event hook is broken
            raise AssertionError("the coordinator did not stop at its commit decision")
    finally:
        await coordinator.close()

    before = await _in_doubt(urls)
    rows_before = await _rows(urls)
    recovery = await recover_transactions(urls, log, node=node, retry_for=2.0)
    after = await _in_doubt(urls)
    rows_after = await _rows(urls)

    steps = table("step", "what happened", lines=True)
    votes = ", ".join(f"{k} {v}" for k, v in first_votes.items())
    steps.add_row(
        "order 123", f"prepare: {votes}\ncommit decision logged → [green]{first['state']}[/]"
    )
    steps.add_row(
        "order 124",
        "every branch prepared, commit decision logged,\n"
        "then the coordinator [red]crashed[/] before phase 2",
    )
    steps.add_row(
        "in doubt",
        "\n".join(f"{n}: {', '.join(_short(b) for b in bs) or '-'}" for n, bs in before.items()),
    )
    steps.add_row(
        "recovery",
        f"commit record found → committed {len(recovery['committed'])} branches, "
        f"rolled back {len(recovery['rolled_back'])}\n"
        + ("every branch resolved" if recovery["resolved"] else "[red]some branches unresolved[/]")
        + f"; in doubt now: {sum(len(bs) for bs in after.values())} branches",
    )
    rows = table("database", "before recovery", "after recovery", lines=True)
    for name in PARTICIPANTS:
        rows.add_row(
            f"{name}.db", _rows_text(name, rows_before[name]), _rows_text(name, rows_after[name])
        )
    report.add(
        steps,
        "the protocol, step by step",
        "Phase 1 asks every database to prepare (make the change durable, hold its locks, "
        "promise to commit); phase 2 commits once the decision is in the log. A branch "
        "left prepared by a crash is in doubt: only the decision log can say how it ends, "
        "and recovery (multistore recover) finishes it.",
    )
    report.add(rows, f"rows in each database ({folder.name}/)")
    branches = len(recovery["committed"])
    report.proved = (
        "order 123 committed in three databases at once; a coordinator crash after its "
        f"commit decision left order 124 in doubt, and recovery committed all {branches} "
        "branches from the decision log"
    )
    report.data.update(
        {
            "log_backend": log.scheme,
            "node": node,
            "committed_order": first,
            "crash": {"order_id": "ord_124", "at": "decided", "crashed": crashed},
            "in_doubt_before_recovery": before,
            "recovery": recovery,
            "in_doubt_after_recovery": after,
            "rows_before_recovery": rows_before,
            "rows_after_recovery": rows_after,
        }
    )
    return report
