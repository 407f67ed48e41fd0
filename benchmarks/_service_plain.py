"""The anchor of ``multistore bench service``: a plain FastAPI app that does the same
database writes per order as the shop's order saga, with ``sqlite3`` and nothing else
(no sessions, no rate limit, no idempotency keys, no saga log, no telemetry).

Run by uvicorn (``uvicorn benchmarks._service_plain:app``); ``PLAIN_DATA`` names the
folder of its three SQLite files (orders, payments, inventory, in WAL mode as
multistore's SQLite stores are).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

DATA = Path(os.environ.get("PLAIN_DATA", "."))
SCHEMA = {
    "orders": [
        "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, user_id TEXT, status TEXT, "
        "total_cents INT, created_at REAL, updated_at REAL)",
        "CREATE TABLE IF NOT EXISTS order_items (order_id TEXT, sku TEXT, qty INT, "
        "price_cents INT, PRIMARY KEY (order_id, sku))",
    ],
    "payments": [
        "CREATE TABLE IF NOT EXISTS payments (id TEXT PRIMARY KEY, order_id TEXT UNIQUE, "
        "user_id TEXT, amount_cents INT, status TEXT, created_at REAL)",
    ],
    "inventory": [
        "CREATE TABLE IF NOT EXISTS products (sku TEXT PRIMARY KEY, price_cents INT)",
        "CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, stock INT)",
        "CREATE TABLE IF NOT EXISTS reservations (order_id TEXT, sku TEXT, qty INT, "
        "PRIMARY KEY (order_id, sku))",
    ],
}
_local = threading.local()


def db(name: str) -> sqlite3.Connection:
    conns: dict[str, sqlite3.Connection] | None = getattr(_local, "conns", None)
    if conns is None:
        conns = _local.conns = {}
    if name not in conns:
        conn = sqlite3.connect(DATA / f"{name}.db", timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        for statement in SCHEMA[name]:
            conn.execute(statement)
        conns[name] = conn
    return conns[name]


class Item(BaseModel):
    sku: str
    qty: int


class OrderBody(BaseModel):
    items: list[Item]


app = FastAPI()


@app.post("/products/{sku}")
def product(sku: str, price_cents: int, stock: int) -> dict[str, Any]:
    inventory = db("inventory")
    inventory.execute("INSERT OR REPLACE INTO products VALUES (?, ?)", (sku, price_cents))
    inventory.execute("INSERT OR REPLACE INTO stock VALUES (?, ?)", (sku, stock))
    return {"sku": sku}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/orders", status_code=201)
def place(body: OrderBody) -> dict[str, Any]:
    order_id = "ord_" + uuid.uuid4().hex[:24]
    now = time.time()
    inventory, orders, payments = db("inventory"), db("orders"), db("payments")
    prices = {
        i.sku: inventory.execute(
            "SELECT price_cents FROM products WHERE sku = ?", (i.sku,)
        ).fetchone()[0]
        for i in body.items
    }
    total = sum(prices[i.sku] * i.qty for i in body.items)
    orders.execute("BEGIN IMMEDIATE")
    orders.execute(
        "INSERT INTO orders VALUES (?, 'u', 'pending', ?, ?, ?)", (order_id, total, now, now)
    )
    for i in body.items:
        orders.execute(
            "INSERT INTO order_items VALUES (?, ?, ?, ?)", (order_id, i.sku, i.qty, prices[i.sku])
        )
    orders.execute("COMMIT")
    payments.execute(
        "INSERT INTO payments VALUES (?, ?, 'u', ?, 'charged', ?)",
        ("pay_" + order_id[4:], order_id, total, now),
    )
    inventory.execute("BEGIN IMMEDIATE")
    for i in body.items:
        inventory.execute(
            "UPDATE stock SET stock = stock - ? WHERE sku = ? AND stock >= ?",
            (i.qty, i.sku, i.qty),
        )
        inventory.execute("INSERT INTO reservations VALUES (?, ?, ?)", (order_id, i.sku, i.qty))
    inventory.execute("COMMIT")
    orders.execute("UPDATE orders SET status = 'confirmed', updated_at = ? WHERE id = ?",
                   (time.time(), order_id))  # fmt: skip
    return {"id": order_id, "status": "confirmed", "total_cents": total}
