"""The seed's business transaction: an order, its payment and the stock it takes, each in
its own database, committed atomically through a :class:`TransactionCoordinator`.

::

    coordinator = await TransactionCoordinator.open(
        {"orders": ..., "payments": ..., "inventory": ...}, log=...)
    await create_shop_tables(coordinator)
    await restock(coordinator, {"product1": 5, "product2": 5})
    await place_order(coordinator, Order(123, Decimal("99.99"), ("product1", "product2")))

An item out of stock raises :class:`OutOfStockError` inside the transaction, so nothing
is written anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from multistore.consistency._tpc_coordinator import DistributedTransaction, TransactionCoordinator
from multistore.errors import ConflictError, InvalidValueError

__all__ = ["Order", "OutOfStockError", "create_shop_tables", "place_order", "restock"]

ROLES: Final = ("orders", "payments", "inventory")

_TABLES: Final = {
    "orders": "CREATE TABLE IF NOT EXISTS orders (id BIGINT PRIMARY KEY, "
    "amount_cents BIGINT NOT NULL, items TEXT NOT NULL)",
    "payments": "CREATE TABLE IF NOT EXISTS payments (order_id BIGINT PRIMARY KEY, "
    "amount_cents BIGINT NOT NULL)",
    "inventory": "CREATE TABLE IF NOT EXISTS inventory (sku VARCHAR(64) PRIMARY KEY, "
    "stock INT NOT NULL)",
}


class OutOfStockError(ConflictError):
    """An ordered item has no stock left; the whole order was rolled back."""


@dataclass(frozen=True)
class Order:
    """The seed's transaction: ``{'order_id': 123, 'amount': 99.99, 'items': [...]}``."""

    order_id: int
    amount: Decimal
    items: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.amount < 0 or self.amount != self.amount.quantize(Decimal("0.01")):
            raise InvalidValueError(f"order amount {self.amount} must be >= 0 with 2 decimals")
        if not self.items:
            raise InvalidValueError(f"order {self.order_id} has no items")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Order:
        return cls(int(data["order_id"]), Decimal(str(data["amount"])), tuple(data["items"]))

    @property
    def amount_cents(self) -> int:
        return int(self.amount * 100)


async def create_shop_tables(coordinator: TransactionCoordinator) -> None:
    """Create the orders, payments and inventory tables, each in its own participant
    (DDL runs outside 2PC: MariaDB refuses it inside an XA transaction)."""
    for role in ROLES:
        await coordinator.participants[role].execute_script(_TABLES[role])


async def restock(coordinator: TransactionCoordinator, stock: Mapping[str, int]) -> None:
    """Set the stock of each SKU."""
    async with coordinator.transaction(["inventory"]) as tx:
        for sku, count in stock.items():
            inv = tx.sql("inventory")
            if await inv.execute(
                "UPDATE inventory SET stock = :n WHERE sku = :sku", {"sku": sku, "n": count}
            ):
                continue
            await inv.execute(
                "INSERT INTO inventory (sku, stock) VALUES (:sku, :n)", {"sku": sku, "n": count}
            )


async def place_order(
    coordinator: TransactionCoordinator, order: Order | Mapping[str, Any]
) -> DistributedTransaction:
    """Record the order, take the payment and the stock, atomically across the three
    databases; the finished transaction. Raises :class:`OutOfStockError` (definite) or
    the coordinator's errors."""
    order = order if isinstance(order, Order) else Order.from_dict(order)
    async with coordinator.transaction(list(ROLES)) as tx:
        await tx.sql("orders").execute(
            "INSERT INTO orders (id, amount_cents, items) VALUES (:id, :cents, :items)",
            {"id": order.order_id, "cents": order.amount_cents, "items": ",".join(order.items)},
        )
        await tx.sql("payments").execute(
            "INSERT INTO payments (order_id, amount_cents) VALUES (:id, :cents)",
            {"id": order.order_id, "cents": order.amount_cents},
        )
        for sku in order.items:
            taken = await tx.sql("inventory").execute(
                "UPDATE inventory SET stock = stock - 1 WHERE sku = :sku AND stock > 0",
                {"sku": sku},
            )
            if not taken:
                raise OutOfStockError(f"order {order.order_id}: {sku!r} is out of stock")
    return tx
