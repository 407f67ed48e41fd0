"""The shop's HTTP API against a real ``multistore serve`` process on embedded stores:
sessions, profiles, catalog, orders (saga and 2PC), payments, carts, social graph,
readings, request metrics; authentication and the per-user scope of everything;
problem+json errors that name the bad field and store nothing."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.fix_service import ServiceProcess, ShopClient, assert_problem, wait_until


@contextmanager
def database(service: ServiceProcess, name: str) -> Iterator[sqlite3.Connection]:
    """Read one of the server's SQLite files directly (what the shop really stored)."""
    path = service.folder / ".multistore" / name
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        yield conn


def rows(service: ServiceProcess, db: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    with database(service, db) as conn:
        return [dict(r) for r in conn.execute(sql, params).fetchall()]


def product(admin: ShopClient, *, stock: int, price: str = "10.00", **fields: Any) -> str:
    sku = f"sku-{uuid.uuid4().hex[:10]}"
    body = {"sku": sku, "name": f"Thing {sku}", "category": "things", "price": price}
    response = admin.post("/products", json={**body, "stock": stock, **fields})
    assert response.status_code == 201, response.text
    return sku


def stock(service: ServiceProcess, sku: str) -> int:
    found = rows(service, "shop-inventory.db", "SELECT stock FROM shop_stock WHERE sku = ?", sku)
    return int(found[0]["stock"])


def payments(service: ServiceProcess, order_id: str) -> list[dict[str, Any]]:
    return rows(
        service, "shop-payments.db", "SELECT * FROM shop_payments WHERE order_id = ?", order_id
    )


@pytest.fixture
def admin(service: ServiceProcess) -> Iterator[ShopClient]:
    with service.admin() as client:
        yield client


# -- sessions --------------------------------------------------------------------------------


def test_login_session_logout(service: ServiceProcess) -> None:
    with service.new_user() as alice:
        info = alice.get("/sessions/current")
        assert info.status_code == 200
        assert info.json()["user"]["username"] == alice.user["username"]
        assert 3500 < info.json()["expires_in"] <= 3600  # the seed's one-hour TTL
        assert alice.delete("/sessions/current").status_code == 204
        assert_problem(alice.get("/sessions/current"), 401, "not-authenticated")
        assert_problem(alice.get("/orders"), 401, "not-authenticated")


def test_wrong_password_and_unknown_user_answer_alike(service: ServiceProcess) -> None:
    with service.new_user() as alice, service.client() as anonymous:
        wrong = anonymous.post(
            "/sessions", json={"username": alice.user["username"], "password": "nope-nope"}
        )
        unknown = anonymous.post("/sessions", json={"username": "nobody", "password": "x"})
        assert (
            assert_problem(wrong, 401, "login-failed")["detail"]
            == (assert_problem(unknown, 401, "login-failed")["detail"])
        )


def test_registration_refuses_bad_input_and_stores_nothing(service: ServiceProcess) -> None:
    with service.client() as anonymous:
        bad = anonymous.post("/users", json={"username": "Bad Name", "password": "long-enough"})
        problem = assert_problem(bad, 422, "invalid-request")
        assert [e["field"] for e in problem["errors"]] == ["body.username"]
        assert not rows(
            service, "orders.db", "SELECT 1 FROM shop_users WHERE username = ?", "Bad Name"
        )
        name = f"dup{uuid.uuid4().hex[:8]}"
        body = {"username": name, "password": "long-enough"}
        assert anonymous.post("/users", json=body).status_code == 201
        assert_problem(anonymous.post("/users", json=body), 409, "username-taken")


def test_rate_limit_per_client(tmp_path: Path) -> None:
    server = ServiceProcess(tmp_path, "--rate-limit", "3")
    server.start()
    try:
        with server.client() as anonymous:
            answers = [anonymous.get("/catalog/search").status_code for _ in range(4)]
            assert answers == [200, 200, 200, 429]
            limited = anonymous.get("/catalog/search")
            assert_problem(limited, 429, "rate-limited")
            assert int(limited.headers["retry-after"]) >= 1
    finally:
        server.stop()


# -- profiles ---------------------------------------------------------------------------------


def test_profile_read_update_and_filters(service: ServiceProcess, admin: ShopClient) -> None:
    with service.new_user("p", age=41, address={"city": "Oslo"}) as alice:
        profile = alice.get("/profiles/me").json()
        assert profile["age"] == 41 and profile["address"] == {"city": "Oslo"}
        changed = alice.patch(
            "/profiles/me", json={"$set": {"address.city": "Berlin"}, "$inc": {"age": 1}}
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["address"]["city"] == "Berlin" and changed.json()["age"] == 42

        refused = alice.patch("/profiles/me", json={"$set": {"username": "mallory"}})
        assert "update.$set.username" in assert_problem(refused, 422)["detail"]
        assert alice.get("/profiles/me").json()["username"] == alice.user["username"]

        assert_problem(alice.get("/profiles", params={"filter": "{}"}), 403, "forbidden")
        found = admin.get(
            "/profiles",
            params={"filter": f'{{"age": {{"$gt": 41}}, "_id": "{alice.user["id"]}"}}'},
        )
        assert [p["username"] for p in found.json()] == [alice.user["username"]]
        none = admin.get(
            "/profiles",
            params={"filter": f'{{"age": {{"$lt": 42}}, "_id": "{alice.user["id"]}"}}'},
        )
        assert none.json() == []


# -- catalog ----------------------------------------------------------------------------------


def test_catalog_follows_product_writes_through_the_outbox(
    service: ServiceProcess, admin: ShopClient
) -> None:
    category = f"cat{uuid.uuid4().hex[:8]}"
    word = f"w{uuid.uuid4().hex[:8]}"
    cheap = product(admin, stock=1, price="5.00", category=category, description=f"{word} cheap")
    dear = product(admin, stock=1, price="50.00", category=category, description=f"{word} dear")

    def indexed() -> bool:
        found = admin.get("/catalog/search", params={"q": word}).json()
        return found["total"] == 2

    wait_until(indexed, "both products in the search index")
    found = admin.get(
        "/catalog/search", params={"q": word, "category": category, "max_price": 10}
    ).json()
    assert [h["sku"] for h in found["hits"]] == [cheap]
    assert found["facets"]["category"] == {category: 1}
    by_price = admin.get("/catalog/search", params={"q": word, "sort": "price_desc"}).json()
    assert [h["sku"] for h in by_price["hits"]] == [dear, cheap]

    renamed = admin.post(
        "/products",
        json={
            "sku": cheap,
            "name": "Renamed",
            "category": "other",
            "price": "5.00",
            "description": f"{word} moved",
        },
    )
    assert renamed.status_code == 201 and renamed.json()["stock"] == 1  # stock kept

    def moved() -> bool:
        hits = admin.get("/catalog/search", params={"q": word, "category": "other"}).json()
        return [h["name"] for h in hits["hits"]] == ["Renamed"]

    wait_until(moved, "the change in the search index")


def test_only_an_admin_writes_products(service: ServiceProcess) -> None:
    with service.new_user() as alice:
        body = {"sku": "not-made", "name": "x", "category": "x", "price": "1.00"}
        assert_problem(alice.post("/products", json=body), 403, "forbidden")
        assert_problem(alice.get("/products/not-made"), 404)


# -- orders -----------------------------------------------------------------------------------


def test_saga_order_completes_with_its_history(service: ServiceProcess, admin: ShopClient) -> None:
    sku = product(admin, stock=5, price="12.50")
    with service.new_user() as alice:
        placed = alice.order({sku: 2})
        assert placed.status_code == 201, placed.text
        order = placed.json()
        assert order["status"] == "confirmed" and order["mode"] == "saga"
        assert order["total_cents"] == 2500
        assert placed.headers["location"] == f"/orders/{order['id']}"
        steps = [(s["step"], s["state"]) for s in order["history"]]
        assert steps == [
            ("create_order", "completed"),
            ("charge_payment", "completed"),
            ("reserve_stock", "completed"),
            ("confirm_order", "completed"),
        ]
        assert alice.get(f"/orders/{order['id']}").json()["history"] == order["history"]
        assert [o["id"] for o in alice.get("/orders").json()] == [order["id"]]
    charged = payments(service, order["id"])
    assert [(p["amount_cents"], p["status"]) for p in charged] == [(2500, "charged")]
    assert stock(service, sku) == 3


def test_saga_out_of_stock_refunds_and_cancels(service: ServiceProcess, admin: ShopClient) -> None:
    sku = product(admin, stock=1)
    with service.new_user() as alice:
        problem = assert_problem(alice.order({sku: 2}), 409, "out-of-stock")
        order = alice.get(problem["instance"]).json()
    assert order["status"] == "cancelled"
    assert order["saga"]["state"] == "compensated"
    states = {s["step"]: s["state"] for s in order["history"]}
    assert states == {
        "create_order": "compensated",
        "charge_payment": "compensated",
        "reserve_stock": "compensated",  # it failed; its undo runs all the same
        "confirm_order": "pending",
    }
    failed = next(s for s in order["history"] if s["step"] == "reserve_stock")
    assert "OutOfStockError" in failed["error"]
    assert [p["status"] for p in payments(service, order["id"])] == ["refunded"]
    assert stock(service, sku) == 1


def test_two_phase_commit_order(service: ServiceProcess, admin: ShopClient) -> None:
    sku = product(admin, stock=1, price="3.00")
    with service.new_user() as alice:
        placed = alice.order({sku: 1}, mode="2pc")
        assert placed.status_code == 201, placed.text
        order = placed.json()
        assert order["mode"] == "2pc" and order["transaction"].startswith("ms2pc:")
        refused = assert_problem(alice.order({sku: 1}, mode="2pc"), 409, "out-of-stock")
        # Rolled back everywhere: no order, no payment, the stock untouched.
        assert_problem(alice.get(refused["instance"]), 404)
        assert payments(service, refused["order"]) == []
    assert [p["status"] for p in payments(service, order["id"])] == ["charged"]
    assert stock(service, sku) == 0


def test_order_input_is_checked_before_anything_is_stored(
    service: ServiceProcess, admin: ShopClient
) -> None:
    sku = product(admin, stock=5)
    with service.new_user() as alice:
        bad_qty = alice.order({sku: 0})
        assert [e["field"] for e in assert_problem(bad_qty, 422)["errors"]] == ["body.items.0.qty"]
        unknown = alice.order({sku: 1, "no-such-sku": 1})
        assert "items[1].sku" in assert_problem(unknown, 422, "unknown-product")["detail"]
        not_json = alice.post(
            "/orders",
            content=b"{nope",
            headers={"Idempotency-Key": '"k1"', "content-type": "application/json"},
        )
        assert_problem(not_json, 422)
        assert alice.get("/orders").json() == []
    assert stock(service, sku) == 5


def test_idempotency_key_replays_the_first_answer(
    service: ServiceProcess, admin: ShopClient
) -> None:
    sku = product(admin, stock=10)
    with service.new_user() as alice, service.new_user() as bob:
        first = alice.order({sku: 1}, key='"same-key"')
        again = alice.order({sku: 1}, key='"same-key"')
        assert first.status_code == again.status_code == 201
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert_problem(alice.order({sku: 2}, key='"same-key"'), 422)  # another body
        # Keys are per user: bob's "same-key" is his own order.
        bobs = bob.order({sku: 1}, key='"same-key"')
        assert bobs.status_code == 201 and "idempotent-replayed" not in bobs.headers
        assert bobs.json()["id"] != first.json()["id"]
        assert_problem(
            alice.post("/orders", json={"items": [{"sku": sku, "qty": 1}]}), 400
        )  # no key
        assert len(alice.get("/orders").json()) == 1
    assert stock(service, sku) == 8
    assert len(payments(service, first.json()["id"])) == 1


def test_payments_charge_once_per_key(service: ServiceProcess) -> None:
    with service.new_user() as alice:
        headers = {"Idempotency-Key": '"order-123-payment"'}
        first = alice.post("/payments", json={"amount": "99.99"}, headers=headers)
        second = alice.post("/payments", json={"amount": "99.99"}, headers=headers)
        assert first.status_code == second.status_code == 201
        assert first.json() == second.json()
        assert first.json()["amount"] == "99.99" and first.json()["status"] == "charged"
        charged = rows(
            service,
            "shop-payments.db",
            "SELECT * FROM shop_payments WHERE user_id = ?",
            alice.user["id"],
        )
        assert [p["amount_cents"] for p in charged] == [9999]
        bad = alice.post("/payments", json={"amount": "-1"}, headers={"Idempotency-Key": '"p2"'})
        assert [e["field"] for e in assert_problem(bad, 422)["errors"]] == ["body.amount"]


def test_a_user_sees_only_their_own_orders(service: ServiceProcess, admin: ShopClient) -> None:
    sku = product(admin, stock=5)
    with service.new_user() as alice, service.new_user() as bob:
        order = alice.order({sku: 1}).json()
        assert_problem(bob.get(f"/orders/{order['id']}"), 404)
        assert bob.get("/orders").json() == []
        assert admin.get(f"/orders/{order['id']}").json()["id"] == order["id"]


def test_anonymous_requests_are_refused(service: ServiceProcess) -> None:
    with service.client() as anonymous:
        assert_problem(anonymous.post("/orders", json={}), 401, "not-authenticated")
        assert_problem(anonymous.get("/carts/me"), 401)
        with service.client("forged-token") as forged:
            assert_problem(forged.get("/profiles/me"), 401)


def test_unknown_path_is_a_problem(service: ServiceProcess) -> None:
    with service.client() as anonymous:
        assert_problem(anonymous.get("/no/such/path"), 404)
        assert_problem(anonymous.delete("/health"), 405)


# -- carts ------------------------------------------------------------------------------------


def test_carts_replicate_and_merge_concurrent_edits(service: ServiceProcess) -> None:
    with service.new_user() as alice, service.new_user() as bob:
        put = alice.put("/carts/me/items/apple", json={"qty": 1}, params={"node": "a"})
        assert put.json() == {"node": "a", "items": {"apple": 1}}
        wait_until(
            lambda: alice.get("/carts/me", params={"node": "b"}).json()["items"] == {"apple": 1},
            "the cart on node b",
        )
        # Edits on both nodes before either has the other's: merged (union, max).
        alice.put("/carts/me/items/pear", json={"qty": 2}, params={"node": "a"})
        alice.put("/carts/me/items/apple", json={"qty": 3}, params={"node": "b"})
        merged = {"apple": 3, "pear": 2}
        for node in ("a", "b"):
            wait_until(
                lambda n=node: alice.get("/carts/me", params={"node": n}).json()["items"] == merged,
                f"the merged cart on node {node}",
            )
        assert bob.get("/carts/me").json()["items"] == {}
        assert_problem(alice.get("/carts/me", params={"node": "zz"}), 422)


# -- social -----------------------------------------------------------------------------------


def test_follow_friends_of_friends_recommendations_path(service: ServiceProcess) -> None:
    users = [service.new_user("s") for _ in range(4)]
    alice, bob, carol, dave = users
    try:
        name = {u: u.user["username"] for u in users}
        assert alice.put(f"/social/following/{name[bob]}").status_code == 204
        bob.put(f"/social/following/{name[carol]}")
        bob.put(f"/social/following/{name[dave]}")
        carol.put(f"/social/following/{name[dave]}")
        view = alice.get("/social/me").json()
        assert view["following"] == [name[bob]]
        assert view["friends_of_friends"] == sorted([name[carol], name[dave]])
        assert {r["username"] for r in view["recommendations"]} == {name[carol], name[dave]}
        assert alice.get(f"/social/path/{name[dave]}").json()["path"] == [
            name[alice],
            name[bob],
            name[dave],
        ]
        assert_problem(alice.put(f"/social/following/{name[alice]}"), 422)
        assert_problem(alice.put("/social/following/nobody-here"), 404)
    finally:
        for user in users:
            user.close()


# -- readings and request metrics -----------------------------------------------------------------


def test_readings_newest_first(service: ServiceProcess) -> None:
    sensor = f"sensor-{uuid.uuid4().hex[:6]}"
    with service.new_user() as alice:
        readings = [
            {"timestamp": f"2024-01-15T10:{m:02d}:00Z", "temperature": 20 + m / 10, "humidity": 45}
            for m in range(0, 50, 10)
        ]
        assert alice.post(f"/readings/{sensor}", json={"readings": readings}).json() == {
            "stored": 5
        }
        got = alice.get(f"/readings/{sensor}", params={"since": "2024-01-15T10:15:00Z"}).json()
        assert [r["timestamp"][11:16] for r in got] == ["10:40", "10:30", "10:20"]
        bad = alice.post(
            f"/readings/{sensor}",
            json={
                "readings": [{"timestamp": "0001-01-01T00:00:00", "temperature": 1, "humidity": 1}]
            },
        )
        assert "timestamp" in assert_problem(bad, 422)["detail"]


def test_request_latencies_become_time_series(service: ServiceProcess) -> None:
    with service.new_user() as alice:
        for _ in range(3):
            alice.get("/health")

        def recorded() -> bool:
            windows = alice.get(
                "/metrics/requests", params={"fn": "count", "route": "/health", "every": 3600}
            ).json()
            return sum(w["value"] or 0 for w in windows) >= 3

        wait_until(recorded, "request points of /health")
        p99 = alice.get("/metrics/requests", params={"fn": "p99", "every": 60}).json()
        assert p99 and all(w["value"] >= 0 for w in p99)
