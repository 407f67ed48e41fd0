"""The router on real PostgreSQL streaming replication: a primary and two hot standbys."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterator

import pytest

from multistore.errors import InvalidValueError, StoreError, StoreUnavailableError
from multistore.lab.proxy import TcpProxy
from multistore.replication import (
    CausalToken,
    Health,
    InvalidTokenError,
    Node,
    ReadPolicy,
    Router,
    RouterConfig,
    replication_status,
)
from tests.replication.pg_cluster import Cluster, create_role, start_cluster
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


def test_forged_tokens_are_refused_and_foreign_ones_checked_with_the_primary(
    cluster: Cluster,
) -> None:
    # A router that never probes by itself: what it knows of the primary comes from
    # its own writes and from the one probe a token ahead of it triggers.
    quiet = dataclasses.replace(FAST, probe_interval=600.0, causal_wait=30.0)

    async def body() -> None:
        async with await _open(cluster, quiet) as router, await _open(cluster) as other:
            await _table(other, "t_forged")
            known = router.tracker.latest
            # a real token from another router, past what this one has seen: accepted
            written = await other.execute("INSERT INTO t_forged VALUES (1, 'other')")
            assert written.token.position > known
            assert await router.fetch_val("SELECT v FROM t_forged", token=written.token) == (
                "other"
            )
            # a position no write reached: refused without polling any standby
            polls = sum(n.polls for n in router.nodes)
            forged = CausalToken(1, written.token.position + (1 << 40))
            with pytest.raises(InvalidTokenError, match="ahead of the primary") as caught:
                await router.fetch_val("SELECT count(*) FROM t_forged", token=forged)
            assert caught.value.definite
            assert sum(n.polls for n in router.nodes) == polls
            with pytest.raises(InvalidTokenError, match="timeline 2"):
                await router.fetch_val("SELECT 1", token=f"2:{written.token.position:X}")
            with pytest.raises(InvalidValueError):
                await router.fetch_val("SELECT 1", token="\uff11:3000000")

    asyncio.run(body())


def test_bounded_staleness_reads_leave_standbys_once_the_primary_stops_answering(
    cluster: Cluster,
) -> None:
    async def body() -> None:
        with TcpProxy("127.0.0.1", cluster.primary.port) as proxy:
            via_proxy = f"postgresql://postgres@127.0.0.1:{proxy.port}/{cluster.database}"
            async with await Router.open(
                via_proxy + "?connect_timeout=2",
                [cluster.url(s) for s in cluster.standbys],
                config=FAST,
                names=NAMES,
            ) as router:
                await _table(router, "t_unanswered")
                proxy.cut()  # the router loses the primary; the standbys still stream
                await wait_until(
                    lambda: (
                        router.primary_failures
                        and time.monotonic() - router.primary.probed_at > 0.6
                    ),
                    "0.6 s since the last good primary probe",
                )
                reads = sum(n.reads for n in router.replicas)
                with pytest.raises(StoreUnavailableError):  # only the primary could serve it
                    await router.fetch_val("SELECT count(*) FROM t_unanswered", max_staleness=0.5)
                assert sum(n.reads for n in router.replicas) == reads
                assert all(router.staleness_bound(n) > 0.5 for n in router.replicas)
                # reads without a bound still go to the standbys, which stay in rotation
                assert await router.fetch_val("SELECT count(*) FROM t_unanswered") == 0
                assert sum(n.reads for n in router.replicas) == reads + 1
                proxy.restore()
                await wait_until(lambda: router.primary_failures == 0, "the primary to answer")
                assert (
                    await router.fetch_val("SELECT count(*) FROM t_unanswered", max_staleness=5.0)
                    == 0
                )
                assert sum(n.reads for n in router.replicas) == reads + 2

    asyncio.run(body())


def test_failover_does_not_promote_when_a_reachable_primary_cannot_be_fenced(
    cluster: Cluster,
) -> None:
    # The cluster stays as it was: nothing is promoted.
    create_role(cluster, "app", [])

    async def body() -> None:
        urls = [cluster.url(s).replace("postgres@", "app@", 1) for s in cluster.servers]
        config = RouterConfig(probe_interval=0.05, probe_timeout=1.0)
        async with await Router.open(urls[0], urls[1:], config=config) as router:
            # without pg_read_all_stats it cannot see the standbys' timeline, and
            # assumes they follow the primary's (under load a first probe may be late:
            # waited for, within a bound)
            deadline = time.monotonic() + 60
            while not all(n.health.in_rotation for n in router.replicas):
                if time.monotonic() > deadline:
                    raise TimeoutError("the standbys never came into rotation")
                await asyncio.sleep(0.05)
            assert all(n.timeline is None for n in router.replicas)
            with pytest.raises(StoreError, match="could not be fenced"):
                await router.failover()
            assert router.primary is router.nodes[0] and router.timeline == 1
            assert all(
                cluster.sql(s, "SELECT pg_is_in_recovery()") == [(True,)] for s in cluster.standbys
            )
            await router.execute("SELECT 1 FROM pg_sleep(0)")  # still the primary

    asyncio.run(body())


def _since(moment: float) -> float:
    return time.monotonic() - moment
