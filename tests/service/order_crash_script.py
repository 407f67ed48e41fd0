"""Place one order in 2PC mode and SIGKILL this process in phase 2, once the payments
and inventory branches committed and before the orders branch does.

Usage: ``python -m tests.service.order_crash_script DIR``: the shop's embedded stores
live under ``DIR``; the product ``sku-c`` (300 cents, 10 in stock) is created first.
Prints ``done`` when it was not killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from multistore.config import load_config
from multistore.consistency._tpc_sqlite import SQLiteBranch
from multistore.service._orders import stock_products
from multistore.service._settings import ServiceSettings
from multistore.service._shop import Shop

ORDER_ID = "ord_crashed"


async def main(directory: str) -> None:
    os.chdir(directory)
    shop = await Shop.open(
        load_config(None, env={}), ServiceSettings(name="dying"), background=False
    )
    assert shop.coordinator is not None
    await stock_products(shop.coordinator, {"sku-c": (300, 10)})
    committed: set[str] = set()

    def on_event(event: str, xid: Any, name: str) -> None:
        if event == "committed":
            committed.add(name)
            if committed >= {"payments", "inventory"}:
                os.kill(os.getpid(), signal.SIGKILL)

    commit = SQLiteBranch.commit

    async def orders_last(self: SQLiteBranch, *, one_phase: bool = False) -> bool:
        if self.name == "orders":  # the crash comes first
            await asyncio.Event().wait()
        return await commit(self, one_phase=one_phase)

    SQLiteBranch.commit = orders_last  # type: ignore[method-assign]
    shop.coordinator.on_event = on_event
    lines = await shop.orders.price([("sku-c", 2)])
    await shop.orders.place(ORDER_ID, "u1", lines, mode="2pc")
    await shop.close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
