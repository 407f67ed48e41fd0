"""Demo section "polyglot persistence": an online shop's data, one store per role.

sessions → key-value, profiles (user profiles of varying shape) → document,
catalog → search, orders → relational,
social → graph, metrics → time series, IoT readings → wide-column. Every part uses
only the public store interfaces, so it runs unchanged when ``multistore.toml``
points the roles at servers. Each part first clears what an earlier run left, so
the demo can run again in the same folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from multistore.cli._human import duration, table
from multistore.config import Config
from multistore.service import READINGS
from multistore.stores.document import DocumentStore
from multistore.stores.graph import GraphStore
from multistore.stores.kv import KeyValueStore
from multistore.stores.relational import Migration, RelationalStore
from multistore.stores.search import FieldType, SearchSchema, SearchStore
from multistore.stores.timeseries import Point, TimeSeriesStore
from multistore.stores.widecolumn import WideColumnStore

# A fixed "now" keeps the report the same from run to run.
NOW = datetime(2024, 1, 15, 11, 0, tzinfo=UTC)


async def _with(
    config: Config, role: str, kind: type, body: Callable[[Any], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    store = await config.open(role)
    try:
        if not isinstance(store, kind):  # pragma: no cover - the config checks models
            raise TypeError(f"role {role} opened {type(store).__name__}, not a {kind.__name__}")
        return await body(store)
    finally:
        await store.close()


async def _sessions(store: KeyValueStore) -> dict[str, Any]:
    session = {"user_id": 123, "username": "alice", "roles": ["user", "premium"]}
    await store.set_json("session:abc123", session, ttl=3600)
    back = await store.get_json("session:abc123")
    ttl = await store.ttl("session:abc123")
    await store.delete("leaderboard")
    await store.zadd("leaderboard", {"alice": 310, "bob": 250, "carol": 420})
    top = await store.zrange("leaderboard", 0, 2, desc=True)
    await store.delete("ratelimit:alice")
    decisions = [await store.rate_limit("ratelimit:alice", 3, 60.0) for _ in range(4)]
    return {
        "session": back,
        "ttl_seconds": round(ttl or 0),
        "leaderboard": [[m, s] for m, s in top],
        "rate_limit_allowed": [d.allowed for d in decisions],
    }


PROFILES: list[dict[str, Any]] = [
    {
        "_id": "user_1",
        "name": "Alice",
        "roles": ["user", "premium"],
        "address": {"city": "Berlin", "country": "DE"},
        "preferences": {"newsletter": True, "language": "de"},
        "orders_placed": 12,
    },
    {
        "_id": "user_2",
        "name": "Bob",
        "roles": ["user"],
        "address": {"city": "Paris", "country": "FR"},
        "orders_placed": 3,
    },
    {
        "_id": "user_3",
        "name": "Carol",
        "roles": ["user", "premium"],
        "address": {"city": "Munich", "country": "DE"},
        "phone": "+49 89 1234",
        "orders_placed": 27,
    },
    {"_id": "user_4", "name": "Dan", "roles": ["user", "premium"], "orders_placed": 5},
]
"""User profiles of varying shape: some have an address, a phone or preferences."""


async def _profiles(store: DocumentStore) -> dict[str, Any]:
    if "users" in await store.collections():
        await store.drop_collection("users")
    await store.insert_many("users", [dict(p) for p in PROFILES])
    found = await store.find(
        "users",
        {"roles": "premium", "address.country": "DE"},
        sort=[("orders_placed", -1)],
        projection=["name", "address.city", "orders_placed"],
    )
    return {"premium_users_in_germany_by_orders": found}


async def _catalog(store: SearchStore) -> dict[str, Any]:
    if "products" in await store.indexes():
        await store.drop_index("products")
    schema = SearchSchema(
        fields={
            "name": FieldType.TEXT,
            "description": FieldType.TEXT,
            "category": FieldType.KEYWORD,
            "price": FieldType.NUMERIC,
        }
    )
    await store.create_index("products", schema)
    docs = [
        {
            "id": "prod_123",
            "name": "Laptop",
            "description": "Intel i7 laptop, 16GB RAM",
            "category": "electronics",
            "price": 999.99,
        },
        {
            "id": "prod_790",
            "name": "Gaming Laptop",
            "description": "fast laptop for games",
            "category": "electronics",
            "price": 1899.0,
        },
        {
            "id": "prod_791",
            "name": "Laptop Sleeve",
            "description": "padded sleeve for laptops",
            "category": "accessories",
            "price": 29.0,
        },
        {
            "id": "prod_456",
            "name": "T-Shirt",
            "description": "blue cotton shirt",
            "category": "clothing",
            "price": 19.99,
        },
    ]
    await store.index("products", docs)
    result = await store.search(
        "products",
        "laptop",
        filters={"category": "electronics"},
        ranges={"price": (None, math.nextafter(1000, -math.inf))},  # price < 1000
        sort=("price", "desc"),
    )
    facets = await store.search("products", "laptop", facets=["category"], limit=0)
    return {
        "query": "laptop, category=electronics, price<1000",
        "hits": [h.id for h in result.hits],
        "facets": facets.facets.get("category", {}),
    }


ORDERS_SCHEMA = [
    Migration(
        1,
        "demo users, orders and order items",
        """
        CREATE TABLE demo_users (id INT PRIMARY KEY, email VARCHAR(255) NOT NULL UNIQUE);
        CREATE TABLE demo_orders (
            id INT PRIMARY KEY,
            user_id INT NOT NULL REFERENCES demo_users(id),
            status VARCHAR(50) NOT NULL,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE demo_order_items (
            order_id INT NOT NULL REFERENCES demo_orders(id) ON DELETE CASCADE,
            product_id VARCHAR(50) NOT NULL,
            quantity INT NOT NULL,
            price DECIMAL(10,2) NOT NULL
        );
        """,
    )
]


async def _orders(store: RelationalStore) -> dict[str, Any]:
    await store.migrate(ORDERS_SCHEMA)
    async with store.transaction() as tx:
        await tx.execute("DELETE FROM demo_order_items")
        await tx.execute("DELETE FROM demo_orders")
        await tx.execute("DELETE FROM demo_users")
        await tx.execute(
            "INSERT INTO demo_users (id, email) VALUES (:id, :email)",
            {"id": 1, "email": "alice@example.com"},
        )
        await tx.execute(
            "INSERT INTO demo_orders (id, user_id, status, created_at) "
            "VALUES (:id, :user, :status, :at)",
            {"id": 1001, "user": 1, "status": "paid", "at": NOW.replace(tzinfo=None)},
        )
        await tx.executemany(
            "INSERT INTO demo_order_items (order_id, product_id, quantity, price) "
            "VALUES (:order, :product, :qty, :price)",
            [
                {"order": 1001, "product": "prod_123", "qty": 1, "price": 999.99},
                {"order": 1001, "product": "prod_456", "qty": 3, "price": 19.99},
            ],
        )
    rows = await store.fetch_all(
        "SELECT o.id AS id, u.email AS email, SUM(oi.quantity * oi.price) AS total "
        "FROM demo_orders o JOIN demo_users u ON o.user_id = u.id "
        "JOIN demo_order_items oi ON oi.order_id = o.id "
        "WHERE o.created_at > :since GROUP BY o.id, u.email",
        {"since": (NOW - timedelta(days=30)).replace(tzinfo=None)},
    )
    return {
        "orders_last_30_days": [
            {"id": r["id"], "email": r["email"], "total": round(float(r["total"]), 2)} for r in rows
        ]
    }


async def _social(store: GraphStore) -> dict[str, Any]:
    await store.clear()
    for name, age in (("Alice", 30), ("Bob", 25), ("Carol", 28)):
        await store.create_node("User", name, {"name": name, "age": age})
    for a, b in (("Alice", "Bob"), ("Bob", "Carol"), ("Carol", "Alice")):
        await store.create_relationship("User", a, "FOLLOWS", "User", b)
    fof = await store.friends_of_friends("User", "Alice", "FOLLOWS")
    path = await store.shortest_path("User", "Alice", "User", "Bob")
    return {
        "friends_of_friends_of_alice": sorted(str(n.get("name")) for n in fof),
        "shortest_path_alice_bob": [str(n.get("name")) for n in path or []],
    }


async def _metrics(store: TimeSeriesStore) -> dict[str, Any]:
    if "http_requests" in await store.measurements():
        await store.drop_measurement("http_requests")
    start = NOW - timedelta(hours=1)
    points = [
        Point(
            "http_requests",
            {"endpoint": "/api/users", "status": "200"},
            {"response_time": 40.0 + (i % 7) * 2.5},
            start + timedelta(minutes=i * 2),
        )
        for i in range(30)
    ]
    await store.write_many(points)
    windows = await store.aggregate(
        "http_requests",
        "response_time",
        fn="mean",
        every=timedelta(minutes=5),
        start=start,
        end=NOW,
        tags={"endpoint": "/api/users"},
    )
    return {
        "points_written": len(points),
        "mean_response_time_per_5m": [
            [w.start.strftime("%H:%M"), round(w.value, 2) if w.value is not None else None]
            for w in windows
        ],
    }


async def _readings(store: WideColumnStore) -> dict[str, Any]:
    await store.drop_table("sensor_readings", if_exists=True)
    await store.create_table(READINGS)
    base = datetime(2024, 1, 14, 20, 0, tzinfo=UTC)
    rows = [
        {
            "sensor_id": sensor,
            "timestamp": base + timedelta(minutes=30 * i),
            "temperature": 20.0 + i / 4,
            "humidity": 45.0 - i / 10,
        }
        for sensor in ("sensor_001", "sensor_002")
        for i in range(40)
    ]
    await store.upsert_many("sensor_readings", rows)
    recent = await store.select(
        "sensor_readings",
        {"sensor_id": "sensor_001"},
        where=[("timestamp", ">", datetime(2024, 1, 15, tzinfo=UTC))],
        limit=100,
    )
    return {
        "rows_written": len(rows),
        "sensor_001_after_midnight": len(recent),
        "newest": recent[0]["timestamp"].isoformat() if recent else None,
    }


PARTS: list[tuple[str, str, type, Callable[[Any], Awaitable[dict[str, Any]]], str]] = [
    (
        "sessions",
        "key-value",
        KeyValueStore,
        _sessions,
        "session with 1 h TTL, leaderboard, rate limit",
    ),
    (
        "profiles",
        "document",
        DocumentStore,
        _profiles,
        "premium users in Germany, most orders first (profiles of varying shape)",
    ),
    ("catalog", "search", SearchStore, _catalog, "full-text 'laptop' with filters and facets"),
    (
        "orders",
        "relational",
        RelationalStore,
        _orders,
        "orders JOIN users JOIN items, last 30 days",
    ),
    ("social", "graph", GraphStore, _social, "friends of friends, shortest path"),
    ("metrics", "time series", TimeSeriesStore, _metrics, "http_requests, mean per 5 minutes"),
    ("readings", "wide-column", WideColumnStore, _readings, "sensor_001 after midnight, limit 100"),
]


def _summary(role: str, r: dict[str, Any]) -> str:
    """One or two readable lines of what a part's store answered."""
    if role == "sessions":
        board = ", ".join(f"{m} {s:g}" for m, s in r["leaderboard"])
        limits = " ".join("allowed" if a else "refused" for a in r["rate_limit_allowed"])
        return (
            f"session:abc123 → {r['session']['username']} "
            f"({', '.join(r['session']['roles'])}), expires in {duration(r['ttl_seconds'])}"
            f"\nleaderboard: {board}\nrate limit 3/min: {limits}"
        )
    if role == "profiles":
        found = r["premium_users_in_germany_by_orders"]
        return "\n".join(
            f"{d['name']} ({d['address']['city']}): {d['orders_placed']} orders" for d in found
        )
    if role == "catalog":
        facets = ", ".join(f"{k} {v}" for k, v in sorted(r["facets"].items()))
        return f"hits: {', '.join(r['hits'])}\nfacets for 'laptop': {facets}"
    if role == "orders":
        return "\n".join(
            f"order {o['id']} {o['email']}: total {o['total']:.2f}"
            for o in r["orders_last_30_days"]
        )
    if role == "social":
        return (
            f"friends of friends of Alice: {', '.join(r['friends_of_friends_of_alice'])}\n"
            f"shortest path Alice-Bob: {' -> '.join(r['shortest_path_alice_bob'])}"
        )
    if role == "metrics":
        windows = r["mean_response_time_per_5m"]
        shown = ", ".join(f"{t} {v}" for t, v in windows[:4])
        return f"{r['points_written']} points; {len(windows)} windows: {shown}, …"
    if role == "readings":
        newest = (r["newest"] or "-").replace("T", " ").replace("+00:00", " UTC")
        return (
            f"{r['rows_written']} rows in 2 partitions; sensor_001 after midnight: "
            f"{r['sensor_001_after_midnight']} rows, newest {newest}"
        )
    return json.dumps(r, default=str)


async def polyglot_section(config: Config) -> Any:
    """Polyglot persistence: each kind of data in the store that fits it."""
    from multistore.cli._demo import SectionReport

    report = SectionReport("polyglot persistence: each kind of data in the store that fits it")
    shown = table("role", "store", "asked", "answer", lines=True)
    for role, model, kind, body, asked in PARTS:
        result = await _with(config, role, kind, body)
        backend = config.role(role).url.scheme
        report.data[role] = {"backend": backend, **result}
        shown.add_row(role, f"{model}\n({backend})", asked, _summary(role, result))
    report.add(
        shown,
        "what each role's store answered",
        "Each question is one the shop asks every day, sent to the kind of store built "
        "for it: a session with a TTL to key-value, profiles of different shapes to "
        "documents, full-text search with facets to a search index, a JOIN to SQL, "
        "friends of friends to a graph, windowed means to time series, a sensor's "
        "newest readings to a wide-column partition.",
    )
    report.proved = "seven questions, each answered by the data model built for it"
    return report
