"""``multistore bench cluster``: multistore on real distributed engines against the
client a user would take instead, on clusters started here from the lab's launchers.

- Redis Cluster (three primaries, three replicas): key-value ``set``/``get`` of one
  key through the store on the lean cluster client against redis-py's asyncio
  ``RedisCluster`` (target: ours at least 0.9x of it);
- PostgreSQL under Patroni (three members, etcd): a primary-key read through
  :class:`~multistore.replication.PatroniRouter` against the same read on one bare
  ``psycopg.AsyncConnection`` to the leader (target: at least 0.91x). ``strong=True``
  reads go to the leader, as the anchor does; a second row lets the router send the
  read to a replica, as it does by default.

Environment, for a quick check rather than a measurement (the smoke test uses them):
``MULTISTORE_BENCH_ROUNDS`` and ``MULTISTORE_BENCH_OPS`` (default 21 rounds of 100
operations), ``MULTISTORE_BENCH_REDIS_CLUSTER`` (a ``redis+cluster://`` seed URL) and
``MULTISTORE_BENCH_PATRONI`` (the Patroni REST endpoints, ``host:port`` comma-separated,
a space, then a PostgreSQL URL with the user and database) to use running clusters
instead of starting them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Iterator

import psycopg
from redis.asyncio.cluster import ClusterNode, RedisCluster

from benchmarks._harness import Row, compare
from multistore.lab._patroni import PatroniCluster
from multistore.lab._redis_cluster import RedisClusterServers
from multistore.replication import PatroniRouter, RouterConfig
from multistore.stores import open_store
from multistore.stores.kv import KeyValueStore
from multistore.urls import parse_url

VALUE = b'{"user_id":123,"username":"alice","roles":["user","premium"]}'
ROUNDS = int(os.environ.get("MULTISTORE_BENCH_ROUNDS", "21"))
OPS = int(os.environ.get("MULTISTORE_BENCH_OPS", "100"))
ROWS = 1000
SELECT = "SELECT id, v FROM bench WHERE id = :id"
SELECT_PG = "SELECT id, v FROM bench WHERE id = %s"


async def _redis_cluster_rows(url: str) -> list[Row]:
    store = await open_store(url, model="kv")
    assert isinstance(store, KeyValueStore)
    raw = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in parse_url(url).hosts])
    await raw.initialize()
    try:
        await store.set("session:abc123", VALUE)
        await raw.set("raw:session:abc123", VALUE)
        return [
            await compare(
                "kv set one key, Redis Cluster (3 primaries + 3 replicas)",
                lambda: store.set("session:abc123", VALUE),
                lambda: raw.set("raw:session:abc123", VALUE),
                "redis-py asyncio RedisCluster SET",
                ops=OPS,
                rounds=ROUNDS,
            ),
            await compare(
                "kv get one key, Redis Cluster (3 primaries + 3 replicas)",
                lambda: store.get("session:abc123"),
                lambda: raw.get("raw:session:abc123"),
                "redis-py asyncio RedisCluster GET",
                ops=OPS,
                rounds=ROUNDS,
            ),
        ]
    finally:
        await store.close()
        await raw.aclose()


async def _patroni_rows(rest: list[str], url: str) -> list[Row]:
    config = RouterConfig(max_lag=30.0, probe_interval=0.5, causal_wait=2.0)
    router = await PatroniRouter.open_patroni(rest, url, config=config)
    leader = parse_url(router.primary.url)
    direct = await psycopg.AsyncConnection.connect(
        host=leader.host,
        port=leader.port,
        user=leader.username,
        password=leader.password,
        dbname=leader.database,
        autocommit=True,
    )
    try:
        await router.execute("CREATE TABLE IF NOT EXISTS bench (id BIGINT PRIMARY KEY, v TEXT)")
        loaded = await router.executemany(
            "INSERT INTO bench VALUES (:id, :v) ON CONFLICT DO NOTHING",
            [{"id": i, "v": f"v{i}"} for i in range(ROWS)],
        )
        await router.wait_replayed(loaded.token, within=60)
        deadline = time.monotonic() + 30
        while not any(n.health.in_rotation for n in router.replicas):
            if time.monotonic() > deadline:
                raise RuntimeError("no Patroni replica came into rotation within 30 s")
            await asyncio.sleep(0.1)
        keys = itertools.cycle(range(ROWS))

        async def bare_read() -> None:
            cur = await direct.execute(SELECT_PG, (next(keys),))
            await cur.fetchone()

        return [
            await compare(
                "PK read through the Patroni router, strong (leader)",
                lambda: router.fetch_one(SELECT, {"id": next(keys)}, strong=True),
                bare_read,
                "psycopg, one connection to the leader",
                ops=OPS,
                rounds=ROUNDS,
            ),
            await compare(
                "PK read through the Patroni router (a replica)",
                lambda: router.fetch_one(SELECT, {"id": next(keys)}),
                bare_read,
                "psycopg, one connection to the leader",
                ops=OPS,
                rounds=ROUNDS,
            ),
        ]
    finally:
        await direct.close()
        await router.close()


@contextlib.contextmanager
def _redis_cluster() -> Iterator[str]:
    given = os.environ.get("MULTISTORE_BENCH_REDIS_CLUSTER")
    if given:
        yield given
        return
    with RedisClusterServers() as cluster:
        yield cluster.url()


@contextlib.contextmanager
def _patroni() -> Iterator[tuple[list[str], str]]:
    given = os.environ.get("MULTISTORE_BENCH_PATRONI")
    if given:
        rest, url = given.split()
        yield rest.split(","), url
        return
    with PatroniCluster() as cluster:
        yield cluster.rest_endpoints(), cluster.url("postgres")


async def run() -> list[Row]:
    rows: list[Row] = []
    with _redis_cluster() as url:
        rows += await _redis_cluster_rows(url)
    with _patroni() as (rest, url):
        rows += await _patroni_rows(rest, url)
    return rows
