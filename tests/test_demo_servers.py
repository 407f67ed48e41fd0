"""The demo's polyglot section runs unchanged when multistore.toml points the roles at
real servers (the README's sample config, with the fixtures' ports)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from multistore.lab.servers import (
    FalkorDBServer,
    InfluxDBServer,
    MariaDBServer,
    PostgresServer,
    RedisServer,
)
from tests.cli import run_cli

pytestmark = pytest.mark.server


def test_demo_on_servers(
    tmp_path: Path,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    mariadb_server: MariaDBServer,
    falkordb_server: FalkorDBServer,
    influxdb_server: InfluxDBServer,
) -> None:
    redis_server.flushall()
    shop = postgres_server.create_database()
    orders = mariadb_server.create_database()
    logs = postgres_server.create_database()
    config = tmp_path / "multistore.toml"
    config.write_text(
        "[roles]\n"
        f'sessions = "{redis_server.url(0)}"\n'
        f'profiles = "{shop}"\n'
        f'catalog = "{shop}"\n'
        f'orders = "{orders}"\n'
        f'social = "{falkordb_server.url(graph="social")}"\n'
        f'metrics = "{influxdb_server.create_database()}"\n'
        f'idempotency = "{redis_server.url(1)}"\n'
        f'sagas = "{logs}"\n'
        f'transactions = "{logs}"\n'
    )
    for _ in range(2):  # a second run over the same servers must work too
        result = run_cli("demo", "--json", "--config", str(config), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    sections = {s["title"].split(":")[0]: s for s in report["sections"]}
    poly = sections["polyglot persistence"]
    assert poly["sessions"]["backend"] == "redis"
    assert poly["sessions"]["ttl_seconds"] == 3600
    assert poly["profiles"]["backend"] == "postgresql"
    names = [d["name"] for d in poly["profiles"]["premium_users_in_germany_by_orders"]]
    assert names == ["Carol", "Alice"]
    assert poly["catalog"]["backend"] == "postgresql"
    assert poly["catalog"]["hits"] == ["prod_123"]
    assert poly["orders"]["backend"] == "mariadb"
    assert poly["orders"]["orders_last_30_days"][0]["total"] == pytest.approx(1059.96)
    assert poly["social"]["backend"] == "falkordb"
    assert poly["social"]["friends_of_friends_of_alice"] == ["Carol"]
    assert poly["social"]["shortest_path_alice_bob"] == ["Alice", "Bob"]
    assert poly["metrics"]["backend"] == "influxdb"
    assert poly["metrics"]["points_written"] == 30
    assert len(poly["metrics"]["mean_response_time_per_5m"]) == 12


def test_demo_on_embedded_stores_gives_the_same_answers(tmp_path: Path) -> None:
    result = run_cli("demo", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    poly = json.loads(result.stdout)["sections"][1]
    assert poly["sessions"]["backend"] == "sqlite"
    assert poly["catalog"]["hits"] == ["prod_123"]
    assert poly["catalog"]["facets"] == {"electronics": 2, "accessories": 1}
    # the profiles role holds user profiles, and the demo asks it about users
    users = poly["profiles"]["premium_users_in_germany_by_orders"]
    assert [(u["name"], u["address"]["city"]) for u in users] == [
        ("Carol", "Munich"),
        ("Alice", "Berlin"),
    ]
    assert poly["social"]["friends_of_friends_of_alice"] == ["Carol"]
    assert poly["readings"]["sensor_001_after_midnight"] == 31
    assert poly["readings"]["newest"] == "2024-01-15T15:30:00+00:00"
