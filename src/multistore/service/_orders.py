"""Orders: the seed's order saga, or one two-phase-commit transaction, across the
orders, payments and inventory databases.

**Saga** (the default): create the order (orders db) → charge the payment (payments
db) → reserve the stock (inventory db) → confirm the order. An item out of stock
makes the saga refund the payment and cancel the order. Every step is idempotent
by order id (it finds its own row on a second run), so a step that runs again after
a crash or a retry acts once; the saga id is the order id, so placing the same order
twice runs one saga.

**Two-phase commit**: the order, its payment and the stock move in one distributed
transaction; an item out of stock rolls everything back and no order exists.

The order id comes from the caller (the service derives it from the client and the
``Idempotency-Key``), which is what makes a retried request find the first one's
order instead of placing another.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from multistore.consistency import (
    COMPENSATION_RETRY,
    DistributedTransaction,
    RetryPolicy,
    Saga,
    SagaEngine,
    SagaResult,
    Step,
    StepContext,
    TransactionCoordinator,
)
from multistore.core import SagaState
from multistore.errors import ConflictError, InvalidValueError, Outcome, StoreUnavailableError
from multistore.service._errors import (
    OrderCancelledError,
    OrderNotFoundError,
    OutOfStockError,
    UnknownProductError,
)
from multistore.service._instruments import NO_INSTRUMENTS, Instruments
from multistore.service._schema import DATABASES, TABLES
from multistore.stores.relational import Params, RelationalStore, Row

__all__ = [
    "ORDER_SAGA",
    "OrderLine",
    "Orders",
    "create_tables",
    "order_input",
    "order_saga",
    "place_order_atomically",
    "stock_products",
]

ORDER_SAGA: Final = "shop_order"
MODES: Final = ("saga", "2pc")

StepFn = Callable[[StepContext], Awaitable[Any]]


@dataclass(frozen=True)
class OrderLine:
    """One line of an order: ``qty`` of ``sku`` at ``price_cents`` each."""

    sku: str
    qty: int
    price_cents: int

    def as_dict(self) -> dict[str, Any]:
        return {"sku": self.sku, "qty": self.qty, "price_cents": self.price_cents}


class SQL(Protocol):
    """What the order writes need: a local transaction, or a 2PC branch."""

    async def execute(self, sql: str, params: Params | None = None) -> int: ...

    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None: ...


def _lines(data: Any) -> list[OrderLine]:
    return [OrderLine(str(i["sku"]), int(i["qty"]), int(i["price_cents"])) for i in data]


def _same_order(placed: Mapping[str, Any], order: Mapping[str, Any]) -> bool:
    """Whether two order inputs are the same user's same items (prices aside)."""

    def items(o: Mapping[str, Any]) -> list[tuple[str, int]]:
        return [(str(i["sku"]), int(i["qty"])) for i in o["items"]]

    return placed["user_id"] == order["user_id"] and items(placed) == items(order)


def _input(ctx: StepContext) -> dict[str, Any]:
    return cast(dict[str, Any], ctx.input)


async def _insert_order(
    q: SQL, order: Mapping[str, Any], *, status: str, mode: str, reference: str, now: float
) -> bool:
    """Insert the order and its items unless the order exists; True if inserted."""
    if await q.fetch_one("SELECT 1 FROM shop_orders WHERE id = :id", {"id": order["order_id"]}):
        return False
    await q.execute(
        "INSERT INTO shop_orders (id, user_id, status, mode, total_cents, reference, "
        "created_at, updated_at) VALUES (:id, :user, :status, :mode, :total, :ref, :now, :now)",
        {
            "id": order["order_id"],
            "user": order["user_id"],
            "status": status,
            "mode": mode,
            "total": order["total_cents"],
            "ref": reference,
            "now": now,
        },
    )
    for line in _lines(order["items"]):
        await q.execute(
            "INSERT INTO shop_order_items (order_id, sku, qty, price_cents) "
            "VALUES (:order, :sku, :qty, :price)",
            {
                "order": order["order_id"],
                "sku": line.sku,
                "qty": line.qty,
                "price": line.price_cents,
            },
        )
    return True


async def _take_stock(q: SQL, order_id: str, lines: Sequence[OrderLine]) -> None:
    """Take every line's quantity from stock and record the reservation; raise
    :class:`OutOfStockError` (nothing taken, when ``q`` is one transaction) if one
    line has not enough."""
    for line in lines:
        taken = await q.execute(
            "UPDATE shop_stock SET stock = stock - :qty WHERE sku = :sku AND stock >= :qty",
            {"sku": line.sku, "qty": line.qty},
        )
        if not taken:
            raise OutOfStockError(
                f"order {order_id}: not enough {line.sku!r} in stock for {line.qty}",
                order_id=order_id,
            )
        await q.execute(
            "INSERT INTO shop_reservations (order_id, sku, qty) VALUES (:order, :sku, :qty)",
            {"order": order_id, "sku": line.sku, "qty": line.qty},
        )


async def charge(
    q: SQL,
    payment_id: str,
    *,
    user_id: str,
    amount_cents: int,
    description: str,
    order_id: str | None = None,
    now: float,
) -> None:
    """Record a charge unless ``payment_id`` is recorded already (so a retry charges once).

    Payment ids come from the client and its ``Idempotency-Key``, so a key used again
    once its record expired (for an order after a payment, or with another amount)
    names a charge recorded for another request: :class:`ConflictError`, rather than
    taking that charge for this one (an order confirmed without being charged)."""
    recorded = await q.fetch_one(
        "SELECT order_id, user_id, amount_cents FROM shop_payments WHERE id = :id",
        {"id": payment_id},
    )
    if recorded is not None:
        if (recorded["order_id"], recorded["user_id"], int(recorded["amount_cents"])) != (
            order_id,
            user_id,
            amount_cents,
        ):
            raise ConflictError(
                f"payment {payment_id} was recorded for another request (its "
                "Idempotency-Key was used before, and that record expired); send a new key"
            )
        return
    await q.execute(
        "INSERT INTO shop_payments (id, order_id, user_id, amount_cents, status, description, "
        "created_at) VALUES (:id, :order, :user, :amount, 'charged', :what, :now)",
        {
            "id": payment_id,
            "order": order_id,
            "user": user_id,
            "amount": amount_cents,
            "what": description,
            "now": now,
        },
    )


def payment_id_of(order_id: str) -> str:
    return "pay_" + order_id.removeprefix("ord_")


def order_saga(
    dbs: Mapping[str, RelationalStore],
    *,
    instruments: Instruments = NO_INSTRUMENTS,
    compensation_retry: RetryPolicy = COMPENSATION_RETRY,
    clock: Callable[[], float] = time.time,
) -> Saga:
    """The order saga over the three databases (see the module docstring)."""
    orders, payments, inventory = dbs["orders"], dbs["payments"], dbs["inventory"]

    async def create_order(ctx: StepContext) -> dict[str, Any]:
        order = _input(ctx)
        with instruments.store_op("orders", "create_order"):
            async with orders.transaction() as tx:
                await _insert_order(
                    tx, order, status="pending", mode="saga", reference=ctx.saga_id, now=clock()
                )
        return {"order_id": order["order_id"]}

    async def cancel_order(ctx: StepContext) -> None:
        with instruments.store_op("orders", "cancel_order"):
            await orders.execute(
                "UPDATE shop_orders SET status = 'cancelled', updated_at = :now WHERE id = :id",
                {"id": _input(ctx)["order_id"], "now": clock()},
            )

    async def charge_payment(ctx: StepContext) -> dict[str, Any]:
        order = _input(ctx)
        payment_id = payment_id_of(order["order_id"])
        with instruments.store_op("payments", "charge"):
            async with payments.transaction() as tx:
                await charge(
                    tx,
                    payment_id,
                    order_id=order["order_id"],
                    user_id=order["user_id"],
                    amount_cents=order["total_cents"],
                    description=f"order {order['order_id']}",
                    now=clock(),
                )
        return {"payment_id": payment_id, "charged_cents": order["total_cents"]}

    async def refund_payment(ctx: StepContext) -> None:
        with instruments.store_op("payments", "refund"):
            await payments.execute(
                "UPDATE shop_payments SET status = 'refunded' "
                "WHERE order_id = :order AND status = 'charged'",
                {"order": _input(ctx)["order_id"]},
            )

    async def reserve_stock(ctx: StepContext) -> dict[str, Any]:
        order = _input(ctx)
        lines = _lines(order["items"])
        with instruments.store_op("inventory", "reserve"):
            async with inventory.transaction() as tx:
                if not await tx.fetch_one(
                    "SELECT 1 FROM shop_reservations WHERE order_id = :id",
                    {"id": order["order_id"]},
                ):
                    await _take_stock(tx, order["order_id"], lines)
        return {"reserved": {line.sku: line.qty for line in lines}}

    async def release_stock(ctx: StepContext) -> None:
        order_id = _input(ctx)["order_id"]
        with instruments.store_op("inventory", "release"):
            async with inventory.transaction() as tx:
                for row in await tx.fetch_all(
                    "SELECT sku, qty FROM shop_reservations WHERE order_id = :id", {"id": order_id}
                ):
                    await tx.execute(
                        "UPDATE shop_stock SET stock = stock + :qty WHERE sku = :sku",
                        {"sku": row["sku"], "qty": row["qty"]},
                    )
                await tx.execute(
                    "DELETE FROM shop_reservations WHERE order_id = :id", {"id": order_id}
                )

    async def confirm_order(ctx: StepContext) -> dict[str, Any]:
        with instruments.store_op("orders", "confirm_order"):
            await orders.execute(
                "UPDATE shop_orders SET status = 'confirmed', updated_at = :now "
                "WHERE id = :id AND status = 'pending'",
                {"id": _input(ctx)["order_id"], "now": clock()},
            )
        return {"status": "confirmed"}

    def traced(name: str, fn: StepFn) -> StepFn:
        async def step(ctx: StepContext) -> Any:
            kind = "compensate" if ctx.compensating else "step"
            attributes = {"saga.id": ctx.saga_id, "saga.step": name, "saga.attempt": ctx.attempt}
            with instruments.span(f"saga {kind} {name}", attributes):
                return await fn(ctx)

        return step

    def step(name: str, action: StepFn, undo: StepFn | None = None) -> Step:
        return Step(
            name,
            traced(name, action),
            compensate=None if undo is None else traced(name, undo),
            compensation_retry=compensation_retry,
            timeout=10.0,
        )

    return Saga(
        ORDER_SAGA,
        [
            step("create_order", create_order, cancel_order),
            step("charge_payment", charge_payment, refund_payment),
            step("reserve_stock", reserve_stock, release_stock),
            step("confirm_order", confirm_order),
        ],
        timeout=120.0,
    )


def order_input(order_id: str, user_id: str, lines: Sequence[OrderLine]) -> dict[str, Any]:
    """An order as the saga's input and :func:`place_order_atomically` take it."""
    return {
        "order_id": order_id,
        "user_id": user_id,
        "items": [line.as_dict() for line in lines],
        "total_cents": sum(line.qty * line.price_cents for line in lines),
    }


async def create_tables(
    target: TransactionCoordinator | Mapping[str, RelationalStore],
) -> None:
    """Create the shop's tables in its three databases: the stores named ``orders``,
    ``payments`` and ``inventory``, or a coordinator's participants of those names (DDL
    runs outside two-phase commit: MariaDB refuses it inside an XA transaction)."""
    for name in DATABASES:
        db = (
            target.participants[name]
            if isinstance(target, TransactionCoordinator)
            else (target[name])
        )
        for statement in TABLES[name]:
            await db.execute_script(statement)


async def stock_products(
    coordinator: TransactionCoordinator, products: Mapping[str, tuple[int, int]]
) -> None:
    """Create or change products, ``sku -> (price_cents, stock)``, in one transaction."""
    async with coordinator.transaction(["inventory"]) as tx:
        inventory = tx.sql("inventory")
        for sku, (price, stock) in products.items():
            row = {"sku": sku, "price": price, "stock": stock}
            if not await inventory.execute(
                "UPDATE shop_products SET price_cents = :price WHERE sku = :sku", row
            ):
                await inventory.execute(
                    "INSERT INTO shop_products (sku, name, description, category, price_cents, "
                    "updated_at) VALUES (:sku, :sku, '', 'shop', :price, 0)",
                    row,
                )
            if not await inventory.execute(
                "UPDATE shop_stock SET stock = :stock WHERE sku = :sku", row
            ):
                await inventory.execute(
                    "INSERT INTO shop_stock (sku, stock) VALUES (:sku, :stock)", row
                )


async def place_order_atomically(
    coordinator: TransactionCoordinator,
    order: Mapping[str, Any],
    *,
    clock: Callable[[], float] = time.time,
) -> DistributedTransaction:
    """The seed's business transaction: the order, its payment and its stock, in the
    orders, payments and inventory databases, all or nothing. An item without enough
    stock raises :class:`OutOfStockError` inside the transaction, so nothing is written
    anywhere. ``order`` is what :func:`order_input` makes."""
    order_id = order["order_id"]
    async with coordinator.transaction(["orders", "payments", "inventory"]) as tx:
        await _insert_order(
            tx.sql("orders"), order, status="confirmed", mode="2pc", reference=str(tx.xid),
            now=clock(),
        )  # fmt: skip
        await charge(
            tx.sql("payments"),
            payment_id_of(order_id),
            order_id=order_id,
            user_id=order["user_id"],
            amount_cents=order["total_cents"],
            description=f"order {order_id}",
            now=clock(),
        )
        await _take_stock(tx.sql("inventory"), order_id, _lines(order["items"]))
    return tx


class Orders:
    """Places and reads orders; see the module docstring."""

    def __init__(
        self,
        dbs: Mapping[str, RelationalStore],
        engine: SagaEngine,
        saga: Saga,
        coordinator: TransactionCoordinator | None,
        *,
        instruments: Instruments,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dbs = dbs
        self.engine = engine
        self.saga = saga
        self.coordinator = coordinator
        self.instruments = instruments
        self.clock = clock

    async def price(self, items: Sequence[tuple[str, int]]) -> list[OrderLine]:
        """The order lines for ``(sku, qty)`` pairs at the catalog's prices.
        :class:`UnknownProductError` names the first item the catalog lacks."""
        lines: list[OrderLine] = []
        seen: set[str] = set()
        for index, (sku, qty) in enumerate(items):
            if sku in seen:
                raise InvalidValueError(f"items[{index}].sku: {sku!r} is listed twice")
            seen.add(sku)
            with self.instruments.store_op("inventory", "price"):
                price = await self.dbs["inventory"].fetch_val(
                    "SELECT price_cents FROM shop_products WHERE sku = :sku", {"sku": sku}
                )
            if price is None:
                raise UnknownProductError(f"items[{index}].sku: no product {sku!r} in the catalog")
            lines.append(OrderLine(sku, qty, int(price)))
        return lines

    async def place(
        self, order_id: str, user_id: str, lines: Sequence[OrderLine], *, mode: str = "saga"
    ) -> dict[str, Any]:
        """Place the order (or find the one placed with this id) and return it."""
        if mode not in MODES:
            raise InvalidValueError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
        order = order_input(order_id, user_id, lines)
        if mode == "2pc":
            await self._place_atomically(order)
        else:
            result = await self._start_saga(order)
            if result.state is SagaState.COMPENSATED and result.error is not None:
                error = OrderCancelledError(
                    f"order {order_id} was cancelled: {result.error.message}", order_id=order_id
                )
                if result.error.type == OutOfStockError.__name__:
                    error = OutOfStockError(result.error.message, order_id=order_id)
                raise error
            if not result.state.finished:
                # Another live worker runs this order's saga (a retry after a crash,
                # before the dead run's lease ran out and the restarted worker took
                # it): until its first step the order has no row. Not a 404, which
                # would be kept as the key's answer: a 503 the client retries.
                try:
                    return await self.get(order_id)
                except OrderNotFoundError:
                    raise StoreUnavailableError(
                        f"order {order_id} is being placed by another worker; retry shortly",
                        outcome=Outcome.INDETERMINATE,
                    ) from None
        return await self.get(order_id)

    async def _start_saga(self, order: dict[str, Any]) -> SagaResult:
        """Start (or find) the order's saga. A retry that runs again (the first run's
        key lease ran out after a crash) prices its items anew; when the prices changed
        meanwhile, the order id still names the order the first run placed: that
        order, at its first prices, rather than a conflict the key would keep."""
        order_id = order["order_id"]
        try:
            return await self.engine.start(self.saga, order, saga_id=order_id)
        except ConflictError:
            first = await self.engine.log.load(order_id)
            if first is None or first.name != self.saga.name:
                raise
            placed = json.loads(first.input)
            if placed == order or not _same_order(placed, order):
                raise
            return await self.engine.start(self.saga, placed, saga_id=order_id)

    async def _place_atomically(self, order: dict[str, Any]) -> None:
        if self.coordinator is None:  # pragma: no cover - the shop always opens one
            raise InvalidValueError("mode: 2pc is not available on this service")
        order_id = order["order_id"]
        if await self.dbs["orders"].fetch_one(
            "SELECT 1 FROM shop_orders WHERE id = :id", {"id": order_id}
        ):
            return  # placed already (a retry of a committed order)
        if await self.dbs["inventory"].fetch_one(
            "SELECT 1 FROM shop_reservations WHERE order_id = :id", {"id": order_id}
        ) or await self.dbs["payments"].fetch_one(
            "SELECT 1 FROM shop_payments WHERE order_id = :id", {"id": order_id}
        ):
            # An earlier run's transaction committed here and there, and its orders
            # branch waits for recovery (that run's process died in phase 2). Placing
            # the order again would fail on its stock and be kept as the key's answer.
            raise StoreUnavailableError(
                f"order {order_id} is being placed: an earlier attempt's transaction is "
                "not finished yet (recovery completes it); retry shortly",
                outcome=Outcome.INDETERMINATE,
            )
        with self.instruments.span("2pc transaction", {"order.id": order_id}):
            await place_order_atomically(self.coordinator, order, clock=self.clock)

    async def pay(
        self, payment_id: str, user_id: str, amount_cents: int, description: str
    ) -> dict[str, Any]:
        """Charge ``amount_cents`` once per ``payment_id``; the payment as recorded."""
        payments = self.dbs["payments"]
        with self.instruments.store_op("payments", "charge"):
            async with payments.transaction() as tx:
                await charge(
                    tx,
                    payment_id,
                    user_id=user_id,
                    amount_cents=amount_cents,
                    description=description,
                    now=self.clock(),
                )
                row = await tx.fetch_one(
                    "SELECT amount_cents, status, description FROM shop_payments WHERE id = :id",
                    {"id": payment_id},
                )
        assert row is not None
        cents = int(row["amount_cents"])
        return {
            "id": payment_id,
            "amount": f"{cents // 100}.{cents % 100:02d}",
            "amount_cents": cents,
            "status": row["status"],
            "description": row["description"] or "",
        }

    async def get(self, order_id: str, *, user_id: str | None = None) -> dict[str, Any]:
        """The order with its items and its history; ``user_id`` restricts it to
        that user's orders (:class:`OrderNotFoundError` otherwise)."""
        db = self.dbs["orders"]
        with self.instruments.store_op("orders", "get_order"):
            row = await db.fetch_one(
                "SELECT id, user_id, status, mode, total_cents, reference, created_at, updated_at "
                "FROM shop_orders WHERE id = :id",
                {"id": order_id},
            )
            if row is None or (user_id is not None and row["user_id"] != user_id):
                raise OrderNotFoundError(f"no order {order_id!r}")
            items = await db.fetch_all(
                "SELECT sku, qty, price_cents FROM shop_order_items WHERE order_id = :id "
                "ORDER BY sku",
                {"id": order_id},
            )
        order: dict[str, Any] = {
            "id": row["id"],
            "user_id": row["user_id"],
            "status": row["status"],
            "mode": row["mode"],
            "total_cents": int(row["total_cents"]),
            "created_at": float(row["created_at"]),
            "updated_at": float(row["updated_at"]),
            "items": [
                {"sku": i["sku"], "qty": int(i["qty"]), "price_cents": int(i["price_cents"])}
                for i in items
            ],
        }
        if row["mode"] == "saga":
            shown = await self.engine.show(order_id)
            order["saga"] = {"id": order_id, "state": shown["state"], "error": shown["error"]}
            order["history"] = [
                {
                    "step": s["name"],
                    "state": s["state"],
                    "attempts": s["attempts"],
                    "error": s["error"],
                    "compensation_error": s["compensation_error"],
                    "at": s["updated_at"],
                }
                for s in shown["steps"]
            ]
        else:
            order["transaction"] = row["reference"]
            order["history"] = [
                {"step": "prepare", "state": "completed", "participants": list(self.dbs)},
                {"step": "commit", "state": "completed", "participants": list(self.dbs)},
            ]
        return order

    async def of_user(self, user_id: str, *, limit: int = 50) -> list[dict[str, Any]]:
        """A user's orders, newest first (without history)."""
        with self.instruments.store_op("orders", "list_orders"):
            rows = await self.dbs["orders"].fetch_all(
                "SELECT id, status, mode, total_cents, created_at FROM shop_orders "
                "WHERE user_id = :user ORDER BY created_at DESC, id LIMIT :limit",
                {"user": user_id, "limit": limit},
            )
        return [
            {
                "id": r["id"],
                "status": r["status"],
                "mode": r["mode"],
                "total_cents": int(r["total_cents"]),
                "created_at": float(r["created_at"]),
            }
            for r in rows
        ]
