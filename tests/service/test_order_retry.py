"""An order's retry while another live worker runs its saga (after a crash, before the
dead run's lease ran out and a restarted worker took the saga over)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from multistore.config import load_config
from multistore.core import SagaState
from multistore.errors import Outcome, StoreUnavailableError
from multistore.service._orders import OrderLine, order_input
from multistore.service._shop import Shop


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
