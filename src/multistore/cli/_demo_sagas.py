"""Demo section "sagas": the shop's order saga across three databases.

The shop's order saga (the one ``multistore serve`` runs): create order (orders db) →
charge payment (payments db) → reserve stock (inventory db) → confirm order, each
step a local transaction with a compensation. The three databases are SQLite files
in ``<data dir>/demo-sagas`` (cleared at the start); the execution log is the
``sagas`` role's store. Order 1001 goes through; order 1002
asks for a lamp that is out of stock, so the saga refunds the payment and cancels
the order. Saga ids carry a per-run suffix because the log keeps every run and a
saga id is idempotent (starting it again returns the first run).
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
from multistore.consistency import SagaEngine
from multistore.service import OrderLine, create_tables, order_input, order_saga
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore

STOCK = {"book": (2499, 5), "lamp": (3500, 0)}  # sku -> (price in cents, stock)
ORDERS: list[dict[str, Any]] = [
    {"order_id": 1001, "sku": "book", "qty": 2},
    {"order_id": 1002, "sku": "lamp", "qty": 1},
]


async def _open_databases(folder: Path) -> dict[str, RelationalStore]:
    await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)
    await asyncio.to_thread(folder.mkdir, parents=True)
    dbs: dict[str, RelationalStore] = {}
    try:
        for name in ("orders", "payments", "inventory"):
            store = await open_store(f"sqlite:///{folder / name}.db", model="relational")
            assert isinstance(store, RelationalStore)
            dbs[name] = store
        await create_tables(dbs)
        for sku, (price, stock) in STOCK.items():
            await dbs["inventory"].execute(
                "INSERT INTO shop_products (sku, name, description, category, price_cents, "
                "updated_at) VALUES (:sku, :sku, '', 'demo', :price, 0)",
                {"sku": sku, "price": price},
            )
            await dbs["inventory"].execute(
                "INSERT INTO shop_stock (sku, stock) VALUES (:sku, :stock)",
                {"sku": sku, "stock": stock},
            )
    except BaseException:
        for store in dbs.values():
            await store.close()
        raise
    return dbs


async def _holdings(dbs: dict[str, RelationalStore]) -> dict[str, list[dict[str, Any]]]:
    queries = {
        "orders": "SELECT o.id AS order_id, i.sku AS sku, i.qty AS qty, o.status AS status "
        "FROM shop_orders o JOIN shop_order_items i ON i.order_id = o.id ORDER BY o.id",
        "payments": "SELECT order_id, amount_cents, status FROM shop_payments ORDER BY order_id",
        "inventory": "SELECT sku, stock FROM shop_stock ORDER BY sku",
        "reservations": "SELECT order_id, sku, qty FROM shop_reservations ORDER BY order_id",
    }
    held: dict[str, list[dict[str, Any]]] = {}
    for name, sql in queries.items():
        store = dbs["inventory" if name == "reservations" else name]
        held[name] = [dict(row) for row in await store.fetch_all(sql)]
    return held


def _rows_text(name: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    if name == "orders":
        return "\n".join(f"{r['order_id']}: {r['qty']} × {r['sku']}, {r['status']}" for r in rows)
    if name == "payments":
        return "\n".join(
            f"{r['order_id']}: {r['amount_cents'] / 100:.2f}, {r['status']}" for r in rows
        )
    if name == "inventory":
        return "\n".join(f"{r['sku']}: {r['stock']} in stock" for r in rows)
    return "\n".join(f"{r['order_id']}: {r['qty']} × {r['sku']} reserved" for r in rows)


async def sagas_section(config: Config) -> SectionReport:
    """Sagas: the order saga, completed and compensated."""
    report = SectionReport("sagas: create order → charge payment → reserve inventory")
    folder = config.data_dir / "demo-sagas"
    run = uuid.uuid4().hex[:8]
    dbs = await _open_databases(folder)
    try:
        saga = order_saga(dbs)
        log = await config.open("sagas")
        assert isinstance(log, RelationalStore)
        sagas: list[dict[str, Any]] = []
        async with log, SagaEngine(log, [saga]) as engine:
            for order in ORDERS:
                saga_id = f"order-{order['order_id']}-{run}"
                price = STOCK[order["sku"]][0]
                line = OrderLine(order["sku"], order["qty"], price)
                shop_order = order_input(str(order["order_id"]), "demo-user", [line])
                result = await engine.start(saga, shop_order, saga_id=saga_id)
                shown = await engine.show(saga_id)
                sagas.append(
                    {
                        "saga_id": saga_id,
                        "order": order,
                        "state": result.state.value,
                        "error": str(result.error) if result.error else None,
                        "steps": [{"name": s["name"], "state": s["state"]} for s in shown["steps"]],
                    }
                )
        held = await _holdings(dbs)
    finally:
        for store in dbs.values():
            await store.close()

    runs = table("order", "asks for", "saga state", "steps (in order)", "why", lines=True)
    for s in sagas:
        order = s["order"]
        colour = "green" if s["state"] == "completed" else "yellow"
        runs.add_row(
            str(order["order_id"]),
            f"{order['qty']} × {order['sku']}\n{order['qty'] * STOCK[order['sku']][0] / 100:.2f}",
            f"[{colour}]{s['state']}[/]",
            "\n".join(f"{st['name']}: {st['state']}" for st in s["steps"]),
            s["error"] or "",
        )
    rows = table("database", "table", "rows", lines=True)
    for name, table_rows in held.items():
        db = "inventory" if name == "reservations" else name
        rows.add_row(f"{db}.db", name, _rows_text(name, table_rows))
    report.add(
        runs,
        "two orders, two sagas (their log: the sagas role)",
        "Each step is a local transaction in its own database, with a compensation that "
        "undoes it. Order 1002 cannot reserve its stock (the lamp is sold out), so the saga "
        "undoes the steps that ran, newest first: the payment is refunded, the order "
        "cancelled. The log records every step, so a crashed worker's sagas resume where "
        "they stopped.",
    )
    report.add(rows, f"what each database holds afterwards ({folder.name}/)")
    done = {s["order"]["order_id"]: s["state"] for s in sagas}
    report.proved = (
        f"order 1001 {done.get(1001)} across three databases; order 1002 could not "
        f"reserve its stock and was {done.get(1002)}: refunded and cancelled, nothing "
        "left half done"
    )
    report.data.update(
        {"log_backend": config.role("sagas").url.scheme, "sagas": sagas, "databases": held}
    )
    return report
