"""The seed's order saga on three databases, shared by the saga tests and the crash script.

create order (orders db) → charge payment (payments db) → reserve inventory (inventory
db). Every effect is idempotent under the step's idempotency key: a row whose unique
column is that key, inserted with ``ON CONFLICT DO NOTHING``, and any further change
made in the same transaction only when the insert added the row. So a step that runs
again after a crash (its effect applied, its log record not written) finds its row
and changes nothing.

``SAGA_CRASH_AT=effect:<step>:<saga id>`` makes the process SIGKILL itself right
after that step's effect committed (for a compensation: ``undo:<step>:<saga id>``).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any

from multistore.consistency._saga import Parallel, Saga, Step, StepContext
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore


class InventoryError(Exception):
    """Not enough stock: a business error, not retried."""


SCHEMAS = {
    "orders": (
        "CREATE TABLE IF NOT EXISTS orders (order_key VARCHAR(255) PRIMARY KEY, "
        "customer VARCHAR(100) NOT NULL, total INT NOT NULL, status VARCHAR(20) NOT NULL)",
    ),
    "payments": (
        "CREATE TABLE IF NOT EXISTS payments (payment_key VARCHAR(255) PRIMARY KEY, "
        "order_key VARCHAR(255) NOT NULL, amount INT NOT NULL, status VARCHAR(20) NOT NULL)",
        "CREATE TABLE IF NOT EXISTS refunds (refund_key VARCHAR(255) PRIMARY KEY, "
        "payment_key VARCHAR(255) NOT NULL, amount INT NOT NULL)",
    ),
    "inventory": (
        "CREATE TABLE IF NOT EXISTS stock (sku VARCHAR(50) PRIMARY KEY, qty INT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS reservations (reservation_key VARCHAR(255) PRIMARY KEY, "
        "sku VARCHAR(50) NOT NULL, qty INT NOT NULL)",
    ),
}

INITIAL_STOCK = {"book": 1_000_000, "rare": 0}


def maybe_crash(kind: str, ctx: StepContext) -> None:
    if os.environ.get("SAGA_CRASH_AT") == f"{kind}:{ctx.step}:{ctx.saga_id}":
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Shop:
    orders: RelationalStore
    payments: RelationalStore
    inventory: RelationalStore
    executions: RelationalStore | None = None
    """If set: every action run is also recorded (not idempotently) in
    ``executions``, to count how often each step really ran."""
    worker: str = "test"

    @classmethod
    async def open(
        cls, orders: str, payments: str, inventory: str, *, executions: str | None = None
    ) -> Shop:
        stores = []
        for url in (orders, payments, inventory):
            store = await open_store(url, model="relational")
            assert isinstance(store, RelationalStore)
            stores.append(store)
        ex = None
        if executions is not None:
            opened = await open_store(executions, model="relational")
            assert isinstance(opened, RelationalStore)
            ex = opened
        return cls(stores[0], stores[1], stores[2], ex)

    async def setup(self) -> None:
        for name, store in (
            ("orders", self.orders),
            ("payments", self.payments),
            ("inventory", self.inventory),
        ):
            for statement in SCHEMAS[name]:
                await store.execute(statement)
        for sku, qty in INITIAL_STOCK.items():
            await self.inventory.execute(
                "INSERT INTO stock (sku, qty) VALUES (:sku, :qty) ON CONFLICT (sku) DO NOTHING",
                {"sku": sku, "qty": qty},
            )
        if self.executions is not None:
            await self.executions.execute(
                "CREATE TABLE IF NOT EXISTS executions (saga_id VARCHAR(255) NOT NULL, "
                "step VARCHAR(50) NOT NULL, worker VARCHAR(100) NOT NULL)"
            )

    async def close(self) -> None:
        for store in (self.orders, self.payments, self.inventory, self.executions):
            if store is not None:
                await store.close()

    async def _executed(self, ctx: StepContext) -> None:
        if self.executions is not None:
            await self.executions.execute(
                "INSERT INTO executions (saga_id, step, worker) VALUES (:s, :step, :w)",
                {"s": ctx.saga_id, "step": ctx.step, "w": self.worker},
            )

    # -- steps and compensations --

    async def create_order(self, ctx: StepContext) -> dict[str, Any]:
        await self._executed(ctx)
        await self.orders.execute(
            "INSERT INTO orders (order_key, customer, total, status) "
            "VALUES (:key, :customer, :total, 'created') ON CONFLICT (order_key) DO NOTHING",
            {
                "key": ctx.idempotency_key,
                "customer": ctx.input["customer"],
                "total": ctx.input["total"],
            },
        )
        maybe_crash("effect", ctx)
        return {"order": ctx.idempotency_key}

    async def cancel_order(self, ctx: StepContext) -> None:
        await self.orders.execute(
            "UPDATE orders SET status = 'cancelled' WHERE order_key = :key",
            {"key": ctx.idempotency_key},
        )
        maybe_crash("undo", ctx)

    async def charge_payment(self, ctx: StepContext) -> dict[str, Any]:
        await self._executed(ctx)
        await self.payments.execute(
            "INSERT INTO payments (payment_key, order_key, amount, status) "
            "VALUES (:key, :order, :amount, 'charged') ON CONFLICT (payment_key) DO NOTHING",
            {
                "key": ctx.idempotency_key,
                "order": ctx.results["create_order"]["order"],
                "amount": ctx.input["total"],
            },
        )
        maybe_crash("effect", ctx)
        return {"payment": ctx.idempotency_key}

    async def refund_payment(self, ctx: StepContext) -> None:
        # The compensation finds the charge by the step's idempotency key, whether the
        # step completed or crashed half-way (then ctx.output is None).
        async with self.payments.transaction() as tx:
            payment = await tx.fetch_one(
                "SELECT amount FROM payments WHERE payment_key = :key", {"key": ctx.idempotency_key}
            )
            if payment is not None:
                added = await tx.execute(
                    "INSERT INTO refunds (refund_key, payment_key, amount) "
                    "VALUES (:refund, :key, :amount) ON CONFLICT (refund_key) DO NOTHING",
                    {
                        "refund": ctx.idempotency_key + ":refund",
                        "key": ctx.idempotency_key,
                        "amount": payment["amount"],
                    },
                )
                if added:
                    await tx.execute(
                        "UPDATE payments SET status = 'refunded' WHERE payment_key = :key",
                        {"key": ctx.idempotency_key},
                    )
        maybe_crash("undo", ctx)

    async def reserve_inventory(self, ctx: StepContext) -> dict[str, Any]:
        await self._executed(ctx)
        sku, qty = ctx.input["sku"], ctx.input["qty"]
        async with self.inventory.transaction() as tx:
            added = await tx.execute(
                "INSERT INTO reservations (reservation_key, sku, qty) VALUES (:key, :sku, :qty) "
                "ON CONFLICT (reservation_key) DO NOTHING",
                {"key": ctx.idempotency_key, "sku": sku, "qty": qty},
            )
            if added:
                taken = await tx.execute(
                    "UPDATE stock SET qty = qty - :qty WHERE sku = :sku AND qty >= :qty",
                    {"sku": sku, "qty": qty},
                )
                if not taken:
                    raise InventoryError(f"not enough {sku!r} in stock for {qty}")
        maybe_crash("effect", ctx)
        return {"reservation": ctx.idempotency_key}

    def saga(self, *, parallel: bool = False) -> Saga:
        """The seed's order saga; with ``parallel`` the payment and the reservation
        run concurrently after the order is created (same step names, same effects)."""
        charge = Step("charge_payment", self.charge_payment, compensate=self.refund_payment)
        reserve = Step("reserve_inventory", self.reserve_inventory)
        create = Step("create_order", self.create_order, compensate=self.cancel_order)
        if parallel:
            return Saga("order", [create, Parallel("pay_and_reserve", [charge, reserve])])
        return Saga("order", [create, charge, reserve])

    # -- what the databases hold --

    async def counts(self) -> dict[str, int]:
        async def count(store: RelationalStore, sql: str) -> int:
            return int(await store.fetch_val(sql))

        return {
            "orders": await count(self.orders, "SELECT COUNT(*) FROM orders"),
            "orders_cancelled": await count(
                self.orders, "SELECT COUNT(*) FROM orders WHERE status = 'cancelled'"
            ),
            "payments": await count(self.payments, "SELECT COUNT(*) FROM payments"),
            "payments_refunded": await count(
                self.payments, "SELECT COUNT(*) FROM payments WHERE status = 'refunded'"
            ),
            "refunds": await count(self.payments, "SELECT COUNT(*) FROM refunds"),
            "reservations": await count(self.inventory, "SELECT COUNT(*) FROM reservations"),
            "book_stock": await count(self.inventory, "SELECT qty FROM stock WHERE sku = 'book'"),
        }


def order_input(i: int) -> dict[str, Any]:
    """Saga number i: even ones buy a book (completes), odd ones a rare item (compensates)."""
    return {"customer": f"c{i}", "total": 10 + i, "sku": "book" if i % 2 == 0 else "rare", "qty": 1}
