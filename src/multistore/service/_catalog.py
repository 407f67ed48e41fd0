"""The catalog: products in the inventory database, searched in the search store.

A product write changes ``shop_products`` and ``shop_stock`` and adds a
``product.saved`` event to the outbox in the **same** transaction; the outbox relay
delivers the events, in order per product, to :meth:`Catalog.apply_event`, which
writes the search index. The index is thus eventually consistent with the products,
never missing a write and never holding one that was rolled back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from multistore.consistency import Outbox, OutboxEvent
from multistore.errors import InvalidValueError, NotFoundError
from multistore.service._instruments import Instruments
from multistore.service._schema import PRODUCT_INDEX, PRODUCT_SCHEMA
from multistore.stores.relational import RelationalStore
from multistore.stores.search import SearchStore

__all__ = ["Catalog"]

EVENT: Final = "product.saved"
SORTS: Final = {
    "relevance": None,
    "price_asc": ("price", "asc"),
    "price_desc": ("price", "desc"),
}


class Catalog:
    def __init__(
        self,
        inventory: RelationalStore,
        search: SearchStore,
        outbox: Outbox,
        *,
        instruments: Instruments,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inventory = inventory
        self.search_store = search
        self.outbox = outbox
        self.instruments = instruments
        self.clock = clock

    async def setup(self) -> None:
        if PRODUCT_INDEX not in await self.search_store.indexes():
            await self.search_store.create_index(PRODUCT_INDEX, PRODUCT_SCHEMA)

    async def save(self, product: Mapping[str, Any]) -> dict[str, Any]:
        """Create or change a product (and set its stock when given), with its outbox
        event in the same transaction; the product as stored."""
        sku = str(product["sku"])
        row = {
            "sku": sku,
            "name": str(product["name"]),
            "description": str(product.get("description", "")),
            "category": str(product["category"]),
            "price_cents": int(product["price_cents"]),
            "now": self.clock(),
        }
        with self.instruments.store_op("inventory", "save_product"):
            async with self.inventory.transaction() as tx:
                changed = await tx.execute(
                    "UPDATE shop_products SET name = :name, description = :description, "
                    "category = :category, price_cents = :price_cents, updated_at = :now "
                    "WHERE sku = :sku",
                    row,
                )
                if not changed:
                    await tx.execute(
                        "INSERT INTO shop_products (sku, name, description, category, "
                        "price_cents, updated_at) VALUES (:sku, :name, :description, "
                        ":category, :price_cents, :now)",
                        row,
                    )
                stock = product.get("stock")
                if stock is not None:
                    params = {"sku": sku, "stock": int(stock)}
                    if not await tx.execute(
                        "UPDATE shop_stock SET stock = :stock WHERE sku = :sku", params
                    ):
                        await tx.execute(
                            "INSERT INTO shop_stock (sku, stock) VALUES (:sku, :stock)", params
                        )
                elif not await tx.fetch_one("SELECT 1 FROM shop_stock WHERE sku = :sku", row):
                    await tx.execute("INSERT INTO shop_stock (sku, stock) VALUES (:sku, 0)", row)
                document = {k: v for k, v in row.items() if k != "now"}
                await self.outbox.add(tx, f"product:{sku}", EVENT, document)
        return await self.get(sku)

    async def get(self, sku: str) -> dict[str, Any]:
        with self.instruments.store_op("inventory", "get_product"):
            row = await self.inventory.fetch_one(
                "SELECT p.sku AS sku, p.name AS name, p.description AS description, "
                "p.category AS category, p.price_cents AS price_cents, s.stock AS stock "
                "FROM shop_products p LEFT JOIN shop_stock s ON s.sku = p.sku "
                "WHERE p.sku = :sku",
                {"sku": sku},
            )
        if row is None:
            raise NotFoundError(f"no product {sku!r}")
        return {
            "sku": row["sku"],
            "name": row["name"],
            "description": row["description"],
            "category": row["category"],
            "price_cents": int(row["price_cents"]),
            "stock": int(row["stock"] or 0),
        }

    async def apply_event(self, event: OutboxEvent) -> None:
        """The relay's handler: put the product's latest state into the index
        (idempotent, so a redelivery does no harm)."""
        if event.event_type != EVENT:
            return
        doc = event.payload
        with self.instruments.store_op("catalog", "index"):
            await self.search_store.index(
                PRODUCT_INDEX,
                [
                    {
                        "id": doc["sku"],
                        "name": doc["name"],
                        "description": doc["description"],
                        "category": doc["category"],
                        "price": doc["price_cents"] / 100,
                    }
                ],
            )

    async def search(
        self,
        query: str,
        *,
        categories: Sequence[str],
        min_price: float | None,
        max_price: float | None,
        sort: str,
        limit: int,
        offset: int,
    ) -> dict[str, Any]:
        """Full-text search with category filters, a price range, facets by category."""
        if sort not in SORTS:
            raise InvalidValueError(f"sort: {sort!r} is not one of {', '.join(SORTS)}")
        for name, bound in (("min_price", min_price), ("max_price", max_price)):
            if bound is not None and not math.isfinite(bound):
                raise InvalidValueError(f"{name}: must be a finite number")
        ranges = {}
        if min_price is not None or max_price is not None:
            ranges["price"] = (min_price, max_price)
        with self.instruments.store_op("catalog", "search"):
            result = await self.search_store.search(
                PRODUCT_INDEX,
                query,
                filters={"category": list(categories)} if categories else None,
                ranges=ranges or None,
                facets=["category"],
                sort=SORTS[sort],
                offset=offset,
                limit=limit,
            )
        return {
            "total": result.total,
            "hits": [
                {
                    "sku": hit.id,
                    "name": hit.doc.get("name"),
                    "category": hit.doc.get("category"),
                    "price": hit.doc.get("price"),
                    "score": hit.score,
                }
                for hit in result.hits
            ],
            "facets": {"category": result.facets.get("category", {})},
        }
