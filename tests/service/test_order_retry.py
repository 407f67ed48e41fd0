"""An order's retry that runs again: while another live worker runs its saga (after a
crash, before the dead run's lease ran out and a restarted worker took the saga over),
and after the catalog's prices changed."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from multistore.config import load_config
from multistore.core import SagaState
from multistore.errors import ConflictError, Outcome, StoreUnavailableError
from multistore.service._errors import OrderCancelledError, OutOfStockError
from multistore.service._orders import OrderLine, order_input, stock_products
from multistore.service._settings import ServiceSettings
from multistore.service._shop import Shop
from tests.service.order_crash_script import ORDER_ID

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def _shop_with(products: dict[str, tuple[int, int]]) -> AsyncIterator[Shop]:
    """The embedded shop of the current directory, with ``products`` in stock."""
    shop = await Shop.open(load_config(None, env={}), background=False)
    try:
        assert shop.coordinator is not None
        await stock_products(shop.coordinator, products)
        yield shop
    finally:
        await shop.close()


def test_a_retry_while_another_worker_holds_the_saga_is_503_not_a_stored_404(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the saga's first step the order has no row. A 404 there would be kept as
    the idempotency key's answer for good; a 503 (not stored) makes the client retry."""
    monkeypatch.chdir(tmp_path)

    async def body() -> None:
        shop = await Shop.open(load_config(None, env={}), background=False)
        try:
            orders = shop.orders
            lines = [OrderLine("sku-1", 2, 300)]
            order = order_input("ord_held", "u1", lines)
            await orders.engine.enqueue(orders.saga, order, saga_id="ord_held")
            taken = await orders.engine.log.claim_batch(
                [(orders.saga.name, orders.saga.version)],
                owner="another-worker",
                lease=600.0,
                now=time.time(),
                limit=10,
            )
            assert taken == ["ord_held"]
            with pytest.raises(
                StoreUnavailableError, match="being placed by another worker"
            ) as caught:
                await orders.place("ord_held", "u1", lines)
            assert caught.value.outcome is Outcome.INDETERMINATE
            shown = await orders.engine.result("ord_held")
            assert shown.state is SagaState.PENDING  # nothing ran here
        finally:
            await shop.close()

    asyncio.run(body())


def test_a_retry_after_a_price_change_finds_the_order_placed_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry that runs again (the first run's key lease ran out after a crash) prices
    its items anew. The order id names the order the first run placed, at the first
    prices: the retry answers with it, not with a conflict the key would keep."""
    monkeypatch.chdir(tmp_path)

    async def body() -> None:
        async with _shop_with({"sku-r": (300, 10)}) as shop:
            orders = shop.orders
            assert shop.coordinator is not None
            first = await orders.place("ord_priced", "u1", await orders.price([("sku-r", 2)]))
            assert (first["status"], first["total_cents"]) == ("confirmed", 600)
            await stock_products(shop.coordinator, {"sku-r": (350, 10)})
            again = await orders.place("ord_priced", "u1", await orders.price([("sku-r", 2)]))
            assert (again["id"], again["status"], again["total_cents"]) == (
                "ord_priced",
                "confirmed",
                600,
            )
            charged = await shop.dbs["payments"].fetch_all(
                "SELECT amount_cents FROM shop_payments WHERE order_id = 'ord_priced'"
            )
            assert [r["amount_cents"] for r in charged] == [600]  # charged once
            # an order the first run found out of stock is out of stock for the retry too
            with pytest.raises(OutOfStockError):
                await orders.place("ord_short", "u1", await orders.price([("sku-r", 50)]))
            await stock_products(shop.coordinator, {"sku-r": (400, 10)})
            with pytest.raises(OutOfStockError):
                await orders.place("ord_short", "u1", await orders.price([("sku-r", 50)]))

    asyncio.run(body())


def test_a_2pc_order_retried_while_its_first_run_is_in_doubt_is_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first run's process is SIGKILLed in phase 2: the payment and the stock
    committed, the order row waits for recovery. A retry that runs again before
    recovery gets a 503 (not stored), not the conflict of placing the order a second
    time (which the key would keep for good). The dead node's lease (30 s) keeps
    recovery off it meanwhile; once recovery committed the order, a retry finds it."""
    crashed = subprocess.run(
        [sys.executable, "-m", "tests.service.order_crash_script", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    monkeypatch.chdir(tmp_path)

    async def body() -> None:
        settings = ServiceSettings(name="retrying")
        shop = await Shop.open(load_config(None, env={}), settings, background=False)
        try:
            orders = shop.orders
            lines = await orders.price([("sku-c", 2)])
            with pytest.raises(StoreUnavailableError, match="being placed") as caught:
                await orders.place(ORDER_ID, "u1", lines, mode="2pc")
            assert caught.value.outcome is Outcome.INDETERMINATE
            # nothing was placed twice: the first run's payment and stock only
            assert (
                await shop.dbs["inventory"].fetch_val(
                    "SELECT stock FROM shop_stock WHERE sku = 'sku-c'"
                )
                == 8
            )
            assert (
                await shop.dbs["payments"].fetch_val(
                    "SELECT count(*) FROM shop_payments WHERE order_id = :id", {"id": ORDER_ID}
                )
                == 1
            )
        finally:
            await shop.close()

    asyncio.run(body())


def test_a_key_used_again_after_its_record_expired_never_takes_another_requests_charge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orders and payments take their ids from the client and the key ("ord_<d>" pays
    with "pay_<d>", a payment's own id): once a payment's key record expired, the same
    key for an order named that payment. The order is refused, not confirmed uncharged;
    a payment with the key of an order, or of another amount, is refused too."""
    monkeypatch.chdir(tmp_path)

    async def body() -> None:
        async with _shop_with({"sku-p": (300, 10)}) as shop:
            orders = shop.orders
            assert shop.coordinator is not None
            await orders.pay("pay_reused", "u1", 100, "a tip")
            lines = await orders.price([("sku-p", 2)])
            with pytest.raises(OrderCancelledError, match="recorded for another request"):
                await orders.place("ord_reused", "u1", lines)
            await orders.place("ord_first", "u1", lines, mode="2pc")
            with pytest.raises(ConflictError, match="recorded for another request"):
                await orders.pay("pay_first", "u1", 600, "with the order's key")
            with pytest.raises(ConflictError, match="recorded for another request"):
                await orders.pay("pay_reused", "u1", 250, "another amount")
            again = await orders.pay("pay_reused", "u1", 100, "a tip")  # a plain retry
            assert again["amount_cents"] == 100
            charged = await shop.dbs["payments"].fetch_all(
                "SELECT id, order_id, amount_cents FROM shop_payments ORDER BY id"
            )
            assert [(r["id"], r["order_id"], r["amount_cents"]) for r in charged] == [
                ("pay_first", "ord_first", 600),
                ("pay_reused", None, 100),
            ]
            stock = await shop.dbs["inventory"].fetch_val(
                "SELECT stock FROM shop_stock WHERE sku = 'sku-p'"
            )
            assert stock == 8  # the first order's two only

    asyncio.run(body())
