"""Demo section "sagas": the seed's order saga across three databases.

create order (orders db) → charge payment (payments db) → reserve inventory
(inventory db), each step a local transaction with a compensation. The three
databases are SQLite files in ``<data dir>/demo-sagas`` (cleared at the start); the
execution log is the ``sagas`` role's store. Order 1001 goes through; order 1002
asks for a lamp that is out of stock, so the saga refunds the payment and cancels
the order. Saga ids carry a per-run suffix because the log keeps every run and a
saga id is idempotent (starting it again returns the first run).
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path
from typing import Any, cast

from rich.table import Table

from multistore.cli._demo import SectionReport
from multistore.cli._text import styled
from multistore.config import Config
from multistore.consistency import Saga, SagaEngine, Step, StepContext
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore

STOCK = {"book": 5, "lamp": 0}
ORDERS = [
    {"order_id": 1001, "sku": "book", "qty": 2, "amount_cents": 4998},
    {"order_id": 1002, "sku": "lamp", "qty": 1, "amount_cents": 3500},
]

SCHEMAS = {
    "orders": "CREATE TABLE orders (order_id INTEGER PRIMARY KEY, sku TEXT NOT NULL, "
    "qty INTEGER NOT NULL, status TEXT NOT NULL)",
    "payments": "CREATE TABLE payments (order_id INTEGER PRIMARY KEY, "
    "amount_cents INTEGER NOT NULL, status TEXT NOT NULL)",
    "inventory": "CREATE TABLE inventory (sku TEXT PRIMARY KEY, stock INTEGER NOT NULL);\n"
    "CREATE TABLE reservations (order_id INTEGER PRIMARY KEY, sku TEXT NOT NULL, "
    "qty INTEGER NOT NULL)",
}


class OutOfStockError(Exception):
    """Not enough stock: a business error, so the saga compensates at once."""


def _order(ctx: StepContext) -> dict[str, Any]:
    """The saga input: one of :data:`ORDERS`, as the log replays it."""
    return cast(dict[str, Any], ctx.input)


def order_saga(dbs: dict[str, RelationalStore]) -> Saga:
    """The seed's saga; every effect is idempotent by order id, so a step run again
    after a crash finds its own row instead of acting twice."""
    orders, payments, inventory = dbs["orders"], dbs["payments"], dbs["inventory"]

    async def create_order(ctx: StepContext) -> dict[str, Any]:
        order = _order(ctx)
        await orders.execute(
            "INSERT INTO orders (order_id, sku, qty, status) "
            "VALUES (:order_id, :sku, :qty, 'created') ON CONFLICT DO NOTHING",
            {k: order[k] for k in ("order_id", "sku", "qty")},
        )
        return {"order_id": order["order_id"]}

    async def cancel_order(ctx: StepContext) -> None:
        await orders.execute(
            "UPDATE orders SET status = 'cancelled' WHERE order_id = :id",
            {"id": _order(ctx)["order_id"]},
        )

    async def charge_payment(ctx: StepContext) -> dict[str, Any]:
        order = _order(ctx)
        await payments.execute(
            "INSERT INTO payments (order_id, amount_cents, status) "
            "VALUES (:order_id, :amount_cents, 'charged') ON CONFLICT DO NOTHING",
            {"order_id": order["order_id"], "amount_cents": order["amount_cents"]},
        )
        return {"charged_cents": order["amount_cents"]}

    async def refund_payment(ctx: StepContext) -> None:
        await payments.execute(
            "UPDATE payments SET status = 'refunded' WHERE order_id = :id",
            {"id": _order(ctx)["order_id"]},
        )

    async def reserve_inventory(ctx: StepContext) -> dict[str, Any]:
        order = _order(ctx)
        async with inventory.transaction() as tx:
            if await tx.fetch_one(
                "SELECT 1 FROM reservations WHERE order_id = :id", {"id": order["order_id"]}
            ):
                return {"reserved": order["qty"]}
            taken = await tx.execute(
                "UPDATE inventory SET stock = stock - :qty WHERE sku = :sku AND stock >= :qty",
                {"sku": order["sku"], "qty": order["qty"]},
            )
            if not taken:
                left = await tx.fetch_val(
                    "SELECT stock FROM inventory WHERE sku = :sku", {"sku": order["sku"]}
                )
                raise OutOfStockError(f"{left} {order['sku']} left, the order wants {order['qty']}")
            await tx.execute(
                "INSERT INTO reservations (order_id, sku, qty) VALUES (:id, :sku, :qty)",
                {"id": order["order_id"], "sku": order["sku"], "qty": order["qty"]},
            )
        return {"reserved": order["qty"]}

    return Saga(
        "demo_order",
        [
            Step("create_order", create_order, compensate=cancel_order, timeout=5.0),
            Step("charge_payment", charge_payment, compensate=refund_payment, timeout=5.0),
            Step("reserve_inventory", reserve_inventory, timeout=5.0),
        ],
        timeout=30.0,
    )


async def _open_databases(folder: Path) -> dict[str, RelationalStore]:
    await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)
    await asyncio.to_thread(folder.mkdir, parents=True)
    dbs: dict[str, RelationalStore] = {}
    try:
        for name, ddl in SCHEMAS.items():
            store = await open_store(f"sqlite:///{folder / name}.db", model="relational")
            assert isinstance(store, RelationalStore)
            dbs[name] = store
            await store.execute_script(ddl)
        await dbs["inventory"].executemany(
            "INSERT INTO inventory (sku, stock) VALUES (:sku, :stock)",
            [{"sku": sku, "stock": n} for sku, n in STOCK.items()],
        )
    except BaseException:
        for store in dbs.values():
            await store.close()
        raise
    return dbs


async def _holdings(dbs: dict[str, RelationalStore]) -> dict[str, list[dict[str, Any]]]:
    queries = {
        "orders": "SELECT order_id, sku, qty, status FROM orders ORDER BY order_id",
        "payments": "SELECT order_id, amount_cents, status FROM payments ORDER BY order_id",
        "inventory": "SELECT sku, stock FROM inventory ORDER BY sku",
        "reservations": "SELECT order_id, sku, qty FROM reservations ORDER BY order_id",
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
                result = await engine.start(saga, order, saga_id=saga_id)
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

    runs = Table(title="two orders, two sagas (log: the sagas role)", show_lines=True)
    for column in ("order", "asks for", "saga state", "steps (in order)", "why"):
        runs.add_column(column, overflow="fold")
    for s in sagas:
        order = s["order"]
        colour = "green" if s["state"] == "completed" else "yellow"
        runs.add_row(
            str(order["order_id"]),
            f"{order['qty']} × {order['sku']}\n{order['amount_cents'] / 100:.2f}",
            styled(s["state"], colour),
            "\n".join(f"{st['name']}: {st['state']}" for st in s["steps"]),
            s["error"] or "",
        )
    rows = Table(title=f"what each database holds afterwards ({folder.name}/)", show_lines=True)
    rows.add_column("database")
    rows.add_column("table")
    rows.add_column("rows", overflow="fold")
    for name, table_rows in held.items():
        db = "inventory" if name == "reservations" else name
        rows.add_row(f"{db}.db", name, _rows_text(name, table_rows))
    report.tables.extend([runs, rows])
    report.data.update(
        {"log_backend": config.role("sagas").url.scheme, "sagas": sagas, "databases": held}
    )
    return report
