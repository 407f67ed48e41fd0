"""The shop's tables, index and wide-column table.

The shop keeps its relational data in three databases, as the seed's order saga and
its two-phase commit do: **orders** (users, orders and their items), **payments**
(charges and refunds) and **inventory** (products, stock, reservations, and the
outbox that feeds the catalog search). They may be three SQLite files, three
server databases, or one database named three times; every statement below is
``CREATE … IF NOT EXISTS`` so that the last case works, and runs on SQLite,
PostgreSQL and MariaDB alike.
"""

from __future__ import annotations

from typing import Final

from multistore.stores.search import FieldType, SearchSchema
from multistore.stores.widecolumn import ClusteringColumn, TableSchema

__all__ = ["DATABASES", "PRODUCT_INDEX", "READINGS", "TABLES"]

DATABASES: Final = ("orders", "payments", "inventory")

# Ids are strings the shop makes (``ord_…``, ``pay_…``, user ids); money is in cents;
# times are Unix seconds.
TABLES: Final[dict[str, tuple[str, ...]]] = {
    "orders": (
        "CREATE TABLE IF NOT EXISTS shop_users ("
        " id VARCHAR(64) PRIMARY KEY,"
        " username VARCHAR(64) NOT NULL UNIQUE,"
        " password_hash VARCHAR(255) NOT NULL,"
        " role VARCHAR(16) NOT NULL,"
        " created_at DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE IF NOT EXISTS shop_orders ("
        " id VARCHAR(64) PRIMARY KEY,"
        " user_id VARCHAR(64) NOT NULL,"
        " status VARCHAR(32) NOT NULL,"
        " mode VARCHAR(8) NOT NULL,"
        " total_cents BIGINT NOT NULL,"
        " reference VARCHAR(255),"
        " created_at DOUBLE PRECISION NOT NULL,"
        " updated_at DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE IF NOT EXISTS shop_order_items ("
        " order_id VARCHAR(64) NOT NULL,"
        " sku VARCHAR(64) NOT NULL,"
        " qty INT NOT NULL,"
        " price_cents BIGINT NOT NULL,"
        " PRIMARY KEY (order_id, sku))",
    ),
    "payments": (
        "CREATE TABLE IF NOT EXISTS shop_payments ("
        " id VARCHAR(64) PRIMARY KEY,"
        " order_id VARCHAR(64) UNIQUE,"
        " user_id VARCHAR(64) NOT NULL,"
        " amount_cents BIGINT NOT NULL,"
        " status VARCHAR(16) NOT NULL,"
        " description VARCHAR(255),"
        " created_at DOUBLE PRECISION NOT NULL)",
    ),
    "inventory": (
        "CREATE TABLE IF NOT EXISTS shop_products ("
        " sku VARCHAR(64) PRIMARY KEY,"
        " name VARCHAR(255) NOT NULL,"
        " description TEXT NOT NULL,"
        " category VARCHAR(64) NOT NULL,"
        " price_cents BIGINT NOT NULL,"
        " updated_at DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE IF NOT EXISTS shop_stock ( sku VARCHAR(64) PRIMARY KEY, stock INT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS shop_reservations ("
        " order_id VARCHAR(64) NOT NULL,"
        " sku VARCHAR(64) NOT NULL,"
        " qty INT NOT NULL,"
        " PRIMARY KEY (order_id, sku))",
    ),
}

PRODUCT_INDEX: Final = "shop_products"
PRODUCT_SCHEMA: Final = SearchSchema(
    fields={
        "name": FieldType.TEXT,
        "description": FieldType.TEXT,
        "category": FieldType.KEYWORD,
        "price": FieldType.NUMERIC,
    }
)

READINGS: Final = TableSchema(
    "sensor_readings",
    partition_key=("sensor_id",),
    clustering=(ClusteringColumn("timestamp", "desc"),),
    columns={
        "sensor_id": "text",
        "timestamp": "timestamp",
        "temperature": "float",
        "humidity": "float",
    },
)
