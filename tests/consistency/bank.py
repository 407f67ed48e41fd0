"""A money-transfer workload over 2PC participants, shared by the tests and the crash script.

Every relational participant has ``accounts(id, balance)`` (three accounts of 1000) and
``transfers(tid, delta)``; transfer ``tid`` moves money between the participants (the
deltas sum to zero) and records a row in each, and, with a Redis participant, sets the
key ``transfer:<tid>``. So: the sum of all balances is constant if and only if no
transfer is half-applied, and each tid must appear in every store or in none.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import redis

from multistore.consistency import TransactionCoordinator
from multistore.lab.servers import PostgresServer
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore

ACCOUNTS = 3
START = 1000


def bank_urls(
    postgres_server: PostgresServer, postgres_url: str, mariadb_url: str, redis_url: str, tmp: Path
) -> dict[str, str]:
    """A bank in every kind of participant (two PostgreSQL databases, MariaDB, SQLite and
    Redis), created; name -> URL."""
    urls = {
        "pg1": postgres_url,
        "pg2": postgres_server.create_database(),
        "maria": mariadb_url,
        "lite": f"sqlite:///{tmp / 'lite.db'}",
        "redis": redis_url,
    }
    asyncio.run(create_bank(urls))
    return urls


def log_url(tmp: Path) -> str:
    """A coordinator's decision log in ``tmp``."""
    return f"sqlite:///{tmp / 'log.db'}"


async def create_bank(urls: Mapping[str, str]) -> None:
    for url in urls.values():
        if url.startswith("redis"):
            continue
        store = cast(RelationalStore, await open_store(url, model="relational"))
        try:
            await store.execute_script(
                "CREATE TABLE accounts (id INT PRIMARY KEY, balance INT NOT NULL);"
                "CREATE TABLE transfers (tid VARCHAR(40) PRIMARY KEY, delta INT NOT NULL)"
            )
            await store.executemany(
                "INSERT INTO accounts (id, balance) VALUES (:id, :b)",
                [{"id": i, "b": START} for i in range(ACCOUNTS)],
            )
        finally:
            await store.close()


def deltas(n: int, names: Sequence[str]) -> dict[str, int]:
    """Transfer ``n``: the participant at ``n % len`` pays 10 to each of the others."""
    sql = [name for name in names if not name.startswith("redis")]
    payer = sql[n % len(sql)]
    out = {name: 10 for name in sql}
    out[payer] = -10 * (len(sql) - 1)
    return out


async def transfer(coordinator: TransactionCoordinator, n: int, names: Sequence[str]) -> None:
    tid = f"t{n}"
    async with coordinator.transaction(list(names)) as tx:
        for name, delta in deltas(n, names).items():
            branch = tx.sql(name)
            await branch.execute(
                "UPDATE accounts SET balance = balance + :d WHERE id = :id",
                {"d": delta, "id": n % ACCOUNTS},
            )
            await branch.execute(
                "INSERT INTO transfers (tid, delta) VALUES (:tid, :d)", {"tid": tid, "d": delta}
            )
        for name in names:
            if name.startswith("redis"):
                tx[name].set(f"transfer:{tid}", "1")


async def snapshot(urls: Mapping[str, str]) -> dict[str, Any]:
    """Balances and transfer ids per store."""
    total = 0
    tids: dict[str, set[str]] = {}
    for name, url in urls.items():
        if url.startswith("redis"):
            client = redis.Redis.from_url(url)
            with contextlib.closing(client):
                keys = client.keys("transfer:*")
                tids[name] = {
                    (k.decode() if isinstance(k, bytes) else str(k)).split(":", 1)[1] for k in keys
                }
            continue
        store = cast(RelationalStore, await open_store(url, model="relational"))
        try:
            total += int(await store.fetch_val("SELECT sum(balance) FROM accounts"))
            rows = await store.fetch_all("SELECT tid FROM transfers")
            tids[name] = {row["tid"] for row in rows}
        finally:
            await store.close()
    sql_stores = sum(1 for url in urls.values() if not url.startswith("redis"))
    return {"total": total, "expected": sql_stores * ACCOUNTS * START, "tids": tids}


def assert_all_or_nothing(snap: Mapping[str, Any]) -> set[str]:
    """Each transfer is in every store or in none; the committed tids."""
    tids: dict[str, set[str]] = snap["tids"]
    everything = set().union(*tids.values())
    for tid in everything:
        holders = sorted(name for name, held in tids.items() if tid in held)
        assert holders == sorted(tids), f"transfer {tid} is only in {holders}"
    assert snap["total"] == snap["expected"], snap
    return everything
