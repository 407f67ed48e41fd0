"""The same service on servers: ``multistore serve --config multistore.toml`` with
Redis, PostgreSQL, MariaDB, FalkorDB and InfluxDB behind the roles, unchanged code.
An order by saga and one by two-phase commit (PostgreSQL and MariaDB participants),
the catalog through the outbox, sessions, the social graph and request metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from multistore.lab.servers import (
    FalkorDBServer,
    InfluxDBServer,
    MariaDBServer,
    PostgresServer,
    RedisServer,
)
from tests.fix_service import ServiceProcess, assert_problem, wait_until
from tests.service.test_api import product

pytestmark = pytest.mark.server


def test_service_on_servers(
    tmp_path: Path,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    mariadb_server: MariaDBServer,
    falkordb_server: FalkorDBServer,
    influxdb_server: InfluxDBServer,
) -> None:
    shop = postgres_server.create_database()
    payments = mariadb_server.create_database()
    inventory = postgres_server.create_database()
    logs = postgres_server.create_database()
    config = tmp_path / "multistore.toml"
    config.write_text(
        "[roles]\n"
        f'sessions = "{redis_server.url(2)}"\n'
        f'profiles = "{shop}"\n'
        f'catalog = "{shop}"\n'
        f'orders = "{shop}"\n'
        f'social = "{falkordb_server.url(graph="shop")}"\n'
        f'metrics = "{influxdb_server.create_database()}"\n'
        f'idempotency = "{redis_server.url(3)}"\n'
        f'sagas = "{logs}"\n'
        f'transactions = "{logs}"\n'
        "[participants]\n"
        f'payments = "{payments}"\n'
        f'inventory = "{inventory}"\n'
    )
    server = ServiceProcess(tmp_path / "run", "--rate-limit", "100000", config=config)
    server.start()
    try:
        with server.admin() as admin, server.new_user() as alice, server.new_user() as bob:
            sku = product(admin, stock=2, price="7.00", description="server-side widget")
            by_saga = alice.order({sku: 1})
            assert by_saga.status_code == 201, by_saga.text
            assert [s["state"] for s in by_saga.json()["history"]] == ["completed"] * 4
            by_2pc = alice.order({sku: 1}, mode="2pc")
            assert by_2pc.status_code == 201, by_2pc.text
            assert_problem(alice.order({sku: 1}, mode="2pc"), 409, "out-of-stock")
            assert_problem(alice.order({sku: 1}), 409, "out-of-stock")
            assert admin.get(f"/products/{sku}").json()["stock"] == 0
            wait_until(
                lambda: alice.get("/catalog/search", params={"q": "widget"}).json()["total"] == 1,
                "the product in the PostgreSQL search index",
            )
            assert alice.put(f"/social/following/{bob.user['username']}").status_code == 204
            assert alice.get("/social/me").json()["following"] == [bob.user["username"]]
            assert 3500 < alice.get("/sessions/current").json()["expires_in"] <= 3600
            wait_until(
                lambda: bool(alice.get("/metrics/requests", params={"fn": "count"}).json()),
                "request points in InfluxDB",
            )
            assert_problem(bob.get(f"/orders/{by_saga.json()['id']}"), 404)
    finally:
        server.stop()
