"""Primary/replica router: what routing and read-your-writes cost.

A PostgreSQL primary and one streaming standby (started here, from the lab's launchers):

- a primary-key read through the router (it lands on the standby) against the same
  read on one bare ``psycopg.AsyncConnection`` to the standby (target: at most 1.10x).
  This anchor is the strict one: no pool at all, while the router leases a pooled
  connection of the standby's relational store; the same statement, parameters
  passed by value, ``conn.execute()`` + ``fetchone()`` as psycopg users write it.
  A second row compares against a ``psycopg_pool.AsyncConnectionPool`` lease (what
  the router does, done by hand), and a third against the relational store alone;
- a read-your-writes read whose token the standby has already replayed (no wait)
  against the same bare read;
- a write followed by a read-your-writes read, which waits for the standby to replay
  the write (``causal_wait=2``), against a bare write then read, both on the primary
  (the only way to read your writes without the router); and the same with
  ``causal_wait=0`` (the default), where the read goes to the primary at once unless
  the router already knows a replica has the write;
- the embedded setup: a primary-key read through the router over SQLite log-shipping
  replicas against plain ``sqlite3`` on a replica file.
"""

from __future__ import annotations

import itertools
import sqlite3
import time

import psycopg
from psycopg_pool import AsyncConnectionPool

from benchmarks._harness import BenchEnv, Row, compare
from multistore.lab.servers import PostgresServer
from multistore.replication import CausalToken, LogShipping, Router, RouterConfig

CONFIG = RouterConfig(max_lag=30.0, probe_interval=0.5, causal_wait=2.0)
ROWS = 1000
SELECT = "SELECT id, v FROM bench WHERE id = :id"
SELECT_PG = "SELECT id, v FROM bench WHERE id = %s"
#: Short rounds, many of them, alternating: on a shared, loaded machine the median of
#: many short interleaved rounds moves far less than that of five long ones.
ROUNDS = 21
OPS = 100


async def _wait_replayed(router: Router, token: CausalToken) -> None:
    deadline = time.monotonic() + 30
    while await router.fetch_val("SELECT 1", token=token, causal_wait=0.5) is None or not any(
        n.position >= token.position for n in router.replicas
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("the standby did not replay the benchmark data in 30 s")


async def _postgres_cases(primary: PostgresServer, standby: PostgresServer, db: str) -> list[Row]:
    router = await Router.open(primary.url(db), [standby.url(db)], config=CONFIG)
    direct = await psycopg.AsyncConnection.connect(standby.url(db), autocommit=True)
    direct_primary = await psycopg.AsyncConnection.connect(primary.url(db), autocommit=True)
    pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[object, ...]]] = AsyncConnectionPool(
        standby.url(db), kwargs={"autocommit": True}, min_size=1, max_size=10, open=False
    )
    await pool.open(wait=True)
    rows: list[Row] = []
    try:
        await router.execute("CREATE TABLE bench (id BIGINT PRIMARY KEY, v TEXT)")
        loaded = await router.executemany(
            "INSERT INTO bench VALUES (:id, :v)", [{"id": i, "v": f"v{i}"} for i in range(ROWS)]
        )
        await _wait_replayed(router, loaded.token)
        keys = itertools.cycle(range(ROWS))

        async def bare_read() -> None:
            cur = await direct.execute(SELECT_PG, (next(keys),))
            await cur.fetchone()

        async def pooled_read() -> None:
            async with pool.connection() as conn:
                cur = await conn.execute(SELECT_PG, (next(keys),))
                await cur.fetchone()

        rows.append(
            await compare(
                "PK read through the router (standby)",
                lambda: router.fetch_one(SELECT, {"id": next(keys)}),
                bare_read,
                "psycopg, one connection to the standby",
                ops=OPS,
                rounds=ROUNDS,
            )
        )
        rows.append(
            await compare(
                "PK read through the router vs a psycopg_pool lease (standby)",
                lambda: router.fetch_one(SELECT, {"id": next(keys)}),
                pooled_read,
                "psycopg_pool AsyncConnectionPool lease + the same read on the standby",
                ops=OPS,
                rounds=ROUNDS,
            )
        )
        store = router.replicas[0].store
        rows.append(
            await compare(
                "PK read through the router vs the relational store alone (standby)",
                lambda: router.fetch_one(SELECT, {"id": next(keys)}),
                lambda: store.fetch_one(SELECT, {"id": next(keys)}),
                "multistore relational store on the standby, no routing",
                ops=OPS,
                rounds=ROUNDS,
            )
        )
        token = loaded.token
        rows.append(
            await compare(
                "read-your-writes read, token already replayed",
                lambda: router.fetch_one(SELECT, {"id": next(keys)}, token=token),
                bare_read,
                "psycopg, one connection to the standby",
                ops=OPS,
                rounds=ROUNDS,
            )
        )
        ids = itertools.count(ROWS)

        async def ours_write_read() -> None:
            i = next(ids)
            written = await router.execute("INSERT INTO bench VALUES (:id, 'w')", {"id": i})
            await router.fetch_one(SELECT, {"id": i}, token=written.token)

        bare_ids = itertools.count(10_000_000)

        async def bare_write_read() -> None:
            i = next(bare_ids)
            await direct_primary.execute("INSERT INTO bench VALUES (%s, 'w')", (i,))
            cur = await direct_primary.execute(SELECT_PG, (i,))
            await cur.fetchone()

        rows.append(
            await compare(
                "write, then read-your-writes read (waits for the standby)",
                ours_write_read,
                bare_write_read,
                "psycopg write then read, both on the primary",
                ops=100,
                warmup=10,
            )
        )

        async def ours_write_read_at_once() -> None:
            i = next(ids)
            written = await router.execute("INSERT INTO bench VALUES (:id, 'w')", {"id": i})
            await router.fetch_one(SELECT, {"id": i}, token=written.token, causal_wait=0.0)

        rows.append(
            await compare(
                "write, then read-your-writes read (causal_wait=0, the default: "
                "the primary at once when no replica is known to have the write)",
                ours_write_read_at_once,
                bare_write_read,
                "psycopg write then read, both on the primary",
                ops=100,
                warmup=10,
            )
        )
    finally:
        await pool.close()
        await direct.close()
        await direct_primary.close()
        await router.close()
    return rows


async def _sqlite_case(env: BenchEnv) -> Row:
    router = await Router.open(
        f"sqlite:///{env.tmp / 'primary.db'}",
        [f"sqlite:///{env.tmp / 'replica1.db'}"],
        config=CONFIG,
        shipping=LogShipping(delay=0.0),
    )
    try:
        await router.execute("CREATE TABLE bench (id INTEGER PRIMARY KEY, v TEXT)")
        loaded = await router.executemany(
            "INSERT INTO bench VALUES (:id, :v)", [{"id": i, "v": f"v{i}"} for i in range(ROWS)]
        )
        await _wait_replayed(router, loaded.token)
        raw = sqlite3.connect(env.tmp / "replica1.db")
        keys = itertools.cycle(range(ROWS))
        try:
            return await compare(
                "PK read through the router (SQLite log-shipping replica)",
                lambda: router.fetch_one(SELECT, {"id": next(keys)}),
                lambda: raw.execute(
                    "SELECT id, v FROM bench WHERE id = ?", (next(keys),)
                ).fetchone(),
                "sqlite3 on the replica file",
            )
        finally:
            raw.close()
    finally:
        await router.close()


async def run() -> list[Row]:
    env = BenchEnv()
    primary = PostgresServer()
    standby: PostgresServer | None = None
    try:
        primary.start()
        db = primary.create_database().rsplit("/", 1)[1]
        standby = PostgresServer.standby_of(primary, start=True)
        rows = await _postgres_cases(primary, standby, db)
        rows.append(await _sqlite_case(env))
        return rows
    finally:
        if standby is not None:
            standby.cleanup()
        primary.cleanup()
        env.close()
