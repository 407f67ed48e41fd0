"""``multistore bench twopc``: distributed transactions per second through the 2PC
coordinator, against a bare loop that does ``tpc_begin/tpc_prepare/tpc_commit`` on each
database one after the other with no coordinator log, and against one ordinary
PostgreSQL transaction; with 1 and 8 concurrent clients. Two PostgreSQL databases, and
PostgreSQL + MariaDB.

Each transaction updates one row in each database (each client its own row, so clients
do not wait on each other's row locks). Ours prepares and commits the branches
concurrently and forces a commit record to an SQLite log (``synchronous=full``),
group-committed across concurrent transactions.

What each side does per transaction, so the ratios can be read fairly:

* Same statements to the databases: per branch the one UPDATE, the transaction start
  (``BEGIN`` / ``XA START``), the prepare and the phase-2 commit. Ours sends the start
  together with the first statement (one round trip, or one hop to the MariaDB
  session's thread), the bare loops send it on its own.
* Ours does more, and that is charged to it: the forced decision-log write (the bare
  loops keep no log, so they cannot recover) and, per branch, the commit-marker INSERT
  that lets recovery detect heuristic outcomes (on PostgreSQL in the same round trip as
  ``PREPARE TRANSACTION``, on MariaDB in the same thread hop as ``XA END`` /
  ``XA PREPARE``).
* Both PostgreSQL databases (and MariaDB) run on one server on this machine, and the
  clients share its cores with the servers: "prepare concurrently" overlaps round trips
  but not server CPU, so it gains less here than across separate servers.
* The bare PostgreSQL + MariaDB loop runs each whole transaction in one blocking call
  on a thread (sync psycopg and PyMySQL), as a user of those drivers would; ours stays
  on the event loop and hops to a MariaDB session thread per step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import psycopg
import pymysql

from benchmarks._harness import BenchEnv, Row, compare_throughput
from multistore.consistency import TransactionCoordinator
from multistore.core._tpc import XA_FORMAT_ID
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore
from multistore.urls import parse_url

CLIENTS = (1, 8)
PER_CLIENT = {1: 200, 8: 50}
UPDATE = "UPDATE accounts SET balance = balance + 1 WHERE id = :id"


async def _setup(url: str) -> None:
    store = cast(RelationalStore, await open_store(url, model="relational"))
    try:
        await store.execute("CREATE TABLE accounts (id INT PRIMARY KEY, balance INT NOT NULL)")
        await store.executemany(
            "INSERT INTO accounts (id, balance) VALUES (:id, 0)", [{"id": i} for i in range(8)]
        )
    finally:
        await store.close()


async def _rate(clients: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Transactions per second of ``clients`` tasks each running ``one(client)`` in a loop."""
    count = PER_CLIENT[clients]

    async def client(c: int) -> None:
        for _ in range(count):
            await one(c)

    await asyncio.gather(*(one(c) for c in range(clients)))  # warm-up
    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return clients * count / (time.perf_counter() - start)


def _pg_kwargs(url: str) -> dict[str, Any]:
    p = parse_url(url)
    return {"host": p.host, "port": p.port, "user": p.username, "dbname": p.database}


async def _bare_pg_pg(urls: list[str], clients: int) -> Callable[[], Awaitable[float]]:
    conns = [
        [await psycopg.AsyncConnection.connect(**_pg_kwargs(u)) for u in urls]
        for _ in range(clients)
    ]

    async def one(c: int) -> None:
        xids = []
        for i, conn in enumerate(conns[c]):
            xid = conn.xid(1, uuid.uuid4().hex, f"b{i}")
            await conn.tpc_begin(xid)
            await conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", [c])
            xids.append(xid)
        for conn in conns[c]:
            await conn.tpc_prepare()
        for conn in conns[c]:
            await conn.tpc_commit()

    async def timed() -> float:
        return await _rate(clients, one)

    _CLEANUP.extend(conn.close for pair in conns for conn in pair)
    return timed


def _bare_pg_maria(
    urls: list[str], clients: int, pool: concurrent.futures.Executor
) -> Callable[[], Awaitable[float]]:
    pg = [psycopg.connect(**_pg_kwargs(urls[0])) for _ in range(clients)]
    m = parse_url(urls[1])
    maria = [
        pymysql.connect(
            host=m.host, port=m.port or 3306, user=m.username or "root", database=m.database
        )
        for _ in range(clients)
    ]

    def one_sync(c: int) -> None:
        gtrid = uuid.uuid4().hex
        xid = pg[c].xid(1, gtrid, "pg")
        pg[c].tpc_begin(xid)
        pg[c].execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", [c])
        with maria[c].cursor() as cur:
            x = f"'{gtrid}','m',{XA_FORMAT_ID}"
            cur.execute(f"XA START {x}")
            cur.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", [c])
            cur.execute(f"XA END {x}")
            pg[c].tpc_prepare()
            cur.execute(f"XA PREPARE {x}")
            pg[c].tpc_commit()
            cur.execute(f"XA COMMIT {x}")

    async def one(c: int) -> None:
        await asyncio.get_running_loop().run_in_executor(pool, one_sync, c)

    async def timed() -> float:
        return await _rate(clients, one)

    for conn in pg:
        _SYNC_CLEANUP.append(conn.close)
    for mconn in maria:
        _SYNC_CLEANUP.append(mconn.close)
    return timed


async def _single_pg(url: str, clients: int) -> Callable[[], Awaitable[float]]:
    conns = [await psycopg.AsyncConnection.connect(**_pg_kwargs(url)) for _ in range(clients)]

    async def one(c: int) -> None:
        async with conns[c].transaction():
            await conns[c].execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", [c])

    async def timed() -> float:
        return await _rate(clients, one)

    _CLEANUP.extend(conn.close for conn in conns)
    return timed


def _ours(coordinator: TransactionCoordinator, clients: int) -> Callable[[], Awaitable[float]]:
    names = list(coordinator.participants)

    async def one(c: int) -> None:
        async with coordinator.transaction(names) as tx:
            for name in names:
                await tx.sql(name).execute(UPDATE, {"id": c})

    async def timed() -> float:
        return await _rate(clients, one)

    return timed


_CLEANUP: list[Callable[[], Awaitable[None]]] = []
_SYNC_CLEANUP: list[Callable[[], None]] = []


async def run() -> list[Row]:
    env = BenchEnv()
    rows: list[Row] = []
    pool = concurrent.futures.ThreadPoolExecutor(max(CLIENTS))
    try:
        pg1, pg2 = await env.url("postgresql"), await env.url("postgresql")
        maria = await env.url("mariadb")
        for url in (pg1, pg2, maria):
            await _setup(url)
        for label, parts in [
            ("2 PostgreSQL", {"a": pg1, "b": pg2}),
            ("PostgreSQL + MariaDB", {"a": pg1, "b": maria}),
        ]:
            coordinator = await TransactionCoordinator.open(
                {k: f"{v}?pool_max=20" for k, v in parts.items()},
                log=f"sqlite:///{env.tmp / 'twopc-log.db'}",
                node="bench",
            )
            try:
                for clients in CLIENTS:
                    ours = _ours(coordinator, clients)
                    if label == "2 PostgreSQL":
                        bare = await _bare_pg_pg([pg1, pg2], clients)
                    else:
                        bare = _bare_pg_maria([pg1, maria], clients, pool)
                    rows.append(
                        await compare_throughput(
                            f"2PC across {label}, {clients} concurrent",
                            ours,
                            bare,
                            "bare tpc loop (no log)",
                            unit="tx/s",
                        )
                    )
                    if label == "2 PostgreSQL":
                        single = await _single_pg(pg1, clients)
                        rows.append(
                            await compare_throughput(
                                f"2PC across {label} vs one local commit, {clients} concurrent",
                                ours,
                                single,
                                "one ordinary PostgreSQL transaction",
                                unit="tx/s",
                            )
                        )
            finally:
                await coordinator.close()
    finally:
        for close in _CLEANUP:
            await close()
        for close_sync in _SYNC_CLEANUP:
            close_sync()
        _CLEANUP.clear()
        _SYNC_CLEANUP.clear()
        pool.shutdown()
        env.close()
    return rows


if __name__ == "__main__":
    for row in asyncio.run(run()):
        print(row)
