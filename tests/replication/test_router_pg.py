"""The router on real PostgreSQL streaming replication: a primary and two hot standbys."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator

import pytest

from multistore.replication import (
    CausalToken,
    Health,
    Node,
    ReadPolicy,
    Router,
    RouterConfig,
    replication_status,
)
from tests.replication.pg_cluster import Cluster, start_cluster
from tests.replication.router_helpers import FAST, wait_until

pytestmark = pytest.mark.server

NAMES = ["pg0", "pg1", "pg2"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from start_cluster()


async def _open(
    cluster: Cluster, config: RouterConfig = FAST, policy: ReadPolicy | None = None
) -> Router:
    return await Router.open(
        cluster.url(cluster.primary),
        [cluster.url(s) for s in cluster.standbys],
        config=config,
        policy=policy,
        names=NAMES,
    )


async def _table(router: Router, name: str) -> CausalToken:
    written = await router.execute(f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, v TEXT)")
    await _replayed(router, written.token)
    return written.token


async def _replayed(router: Router, token: CausalToken, nodes: list[Node] | None = None) -> None:
    targets = nodes if nodes is not None else router.replicas
    await wait_until(
        lambda: all(n.position >= token.position for n in targets), "standbys to replay"
    )


def test_writes_on_primary_reads_on_standbys(cluster: Cluster) -> None:
    async def body() -> None:
        async with await _open(cluster) as router:
            await _table(router, "t_route")
            w = await router.execute("INSERT INTO t_route VALUES (1, 'it''s; DROP TABLE t')")
            await _replayed(router, w.token)
            for _ in range(10):
                assert await router.fetch_val("SELECT count(*) FROM t_route") == 1
            primary, s1, s2 = router.nodes
            assert primary.reads == 0 and s1.reads == 5 and s2.reads == 5
            # locking reads and reads in a write transaction stay on the primary
            writes = primary.writes
            assert await router.fetch_val("SELECT v FROM t_route WHERE id = 1 FOR UPDATE")
            assert primary.writes == writes + 1 and s1.reads + s2.reads == 10
            async with router.transaction() as tx:
                await tx.execute("INSERT INTO t_route VALUES (2, 'b')")
                assert await tx.fetch_val("SELECT count(*) FROM t_route") == 2
            assert tx.token is not None and tx.token.position > w.token.position
            assert await router.fetch_val("SELECT count(*) FROM t_route", token=tx.token) == 2
            assert s1.reads + s2.reads == 11  # served by a standby that replayed it
            # a standby refuses writes; the router never sends them there
            assert cluster.sql(cluster.standbys[0], "SELECT pg_is_in_recovery()") == [(True,)]

    asyncio.run(body())


def _ryw(cluster: Cluster, pairs: int, *, with_token: bool) -> tuple[int, int]:
    """Pairs while standby 1 applies WAL 10 ms late and standby 2 has replay paused."""
    table = f"t_ryw_{pairs}_{int(with_token)}"
    delayed, paused = cluster.standbys

    async def body() -> tuple[int, int]:
        async with await _open(cluster) as router:
            await _table(router, table)
            cluster.sql(delayed, "ALTER SYSTEM SET recovery_min_apply_delay = '10ms'")
            cluster.sql(delayed, "SELECT pg_reload_conf()")
            cluster.sql(paused, "SELECT pg_wal_replay_pause()")
            try:
                session = router.session()
                stale = 0
                insert = f"INSERT INTO {table} VALUES (:id, 'v')"
                select = f"SELECT v FROM {table} WHERE id = :id"
                for i in range(pairs):
                    if with_token:
                        await session.execute(insert, {"id": i})
                        row = await session.fetch_one(select, {"id": i})
                    else:
                        await router.execute(insert, {"id": i})
                        row = await router.fetch_one(select, {"id": i})
                    stale += row is None
                return stale, sum(n.reads for n in router.replicas)
            finally:
                cluster.sql(paused, "SELECT pg_wal_replay_resume()")
                cluster.sql(delayed, "ALTER SYSTEM RESET recovery_min_apply_delay")
                cluster.sql(delayed, "SELECT pg_reload_conf()")

    return asyncio.run(body())


def test_session_reads_see_their_writes_while_standbys_lag(cluster: Cluster) -> None:
    stale, by_standbys = _ryw(cluster, 200, with_token=True)
    assert stale == 0
    assert by_standbys > 100  # mostly served by the delayed standby, not the primary


@pytest.mark.slow
def test_1000_session_pairs_see_their_writes(cluster: Cluster) -> None:
    stale, by_standbys = _ryw(cluster, 1000, with_token=True)
    assert stale == 0 and by_standbys > 500


def test_reads_without_the_token_are_stale(cluster: Cluster) -> None:
    stale, _ = _ryw(cluster, 50, with_token=False)
    assert stale >= 1


def test_lagging_standby_gets_no_new_reads_but_a_running_read_finishes(cluster: Cluster) -> None:
    config = dataclasses.replace(FAST, max_lag=0.3, readmit_after=0.3)

    async def body() -> None:
        async with await _open(cluster, config) as router:
            await _table(router, "t_lag")
            long_read = asyncio.create_task(router.fetch_val("SELECT 42 FROM pg_sleep(3)"))
            await wait_until(lambda: any(n.in_flight for n in router.replicas), "the long read")
            busy = next(n for n in router.replicas if n.in_flight)
            other = next(n for n in router.replicas if n is not busy)
            server = cluster.standbys[router.replicas.index(busy)]
            cluster.sql(server, "SELECT pg_wal_replay_pause()")
            try:
                i = 0

                async def lagging() -> bool:
                    nonlocal i
                    i += 1
                    await router.execute("INSERT INTO t_lag VALUES (:id, 'x')", {"id": i})
                    return busy.health.state is Health.LAGGING

                while not await lagging():
                    assert not long_read.done(), "the standby never counted as lagging"
                    await asyncio.sleep(0.02)  # poll step; bounded by the long read's 3 s
                before = busy.reads
                for _ in range(30):
                    await router.fetch_val("SELECT count(*) FROM t_lag")
                assert busy.reads == before and other.reads >= 30
                assert busy.in_flight == 1
                assert await long_read == 42  # the running read was not killed
            finally:
                cluster.sql(server, "SELECT pg_wal_replay_resume()")
            await wait_until(lambda: busy.health.in_rotation, "the standby to come back")

    asyncio.run(body())


def test_bounded_staleness_strong_reads_and_status(cluster: Cluster) -> None:
    async def body() -> None:
        async with await _open(cluster) as router:
            await _table(router, "t_stale")
            s2 = router.replicas[1]
            cluster.sql(cluster.standbys[1], "SELECT pg_wal_replay_pause()")
            try:
                await router.execute("INSERT INTO t_stale VALUES (1, 'a')")
                await wait_until(lambda: s2.lag_seconds > 0.5, "pg2 to fall 0.5 s behind")
                before = s2.reads
                for _ in range(10):
                    await router.fetch_val("SELECT count(*) FROM t_stale", max_staleness=0.5)
                assert s2.reads == before
                primary_reads = router.primary.reads
                assert await router.fetch_val("SELECT count(*) FROM t_stale", strong=True) == 1
                assert router.primary.reads == primary_reads + 1
                status = await replication_status(router)
                json.dumps(status)
                nodes = {n["name"]: n for n in status["nodes"]}
                assert nodes["pg0"]["role"] == "primary" and status["primary"] == "pg0"
                assert nodes["pg2"]["lag_positions"] > 0 and nodes["pg2"]["lag_seconds"] > 0.5
                assert "/" in nodes["pg1"]["lsn"]
            finally:
                cluster.sql(cluster.standbys[1], "SELECT pg_wal_replay_resume()")

    asyncio.run(body())
