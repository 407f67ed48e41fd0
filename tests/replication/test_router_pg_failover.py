"""Failover on real PostgreSQL: fence the old primary, promote a standby, follow the new
timeline. Each test uses up its own cluster (the old primary ends up fenced)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import psycopg
import pytest

from multistore.errors import Outcome, StoreError, StoreUnavailableError
from multistore.lab.servers import PostgresServer
from multistore.replication import (
    CausalToken,
    FailoverError,
    ForkedTokenError,
    Role,
    Router,
)
from tests.replication.pg_cluster import Cluster, create_role, start_cluster
from tests.replication.router_helpers import FAST, wait_until

pytestmark = pytest.mark.server

CONFIG = dataclasses.replace(FAST, probe_timeout=0.5)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    yield from start_cluster()


async def _open(
    cluster: Cluster,
    primary: PostgresServer,
    replicas: list[PostgresServer],
    user: str = "postgres",
) -> Router:
    names = {id(s): f"pg{i}" for i, s in enumerate(cluster.servers)}

    def url(server: PostgresServer) -> str:
        return cluster.url(server).replace("postgres@", f"{user}@", 1)

    return await Router.open(
        url(primary),
        [url(s) for s in replicas],
        config=CONFIG,
        names=[names[id(s)] for s in (primary, *replicas)],
    )


ROUTER_GRANTS = [
    # what the docs list for a router's user that is not a superuser
    "GRANT pg_read_all_stats TO app",
    "GRANT pg_execute_server_program TO app",
    "GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO app",
    "GRANT EXECUTE ON FUNCTION pg_reload_conf() TO app",
    "GRANT ALTER SYSTEM ON PARAMETER primary_conninfo TO app",
    "GRANT CREATE ON SCHEMA public TO app",  # for this test's table
]


async def _can_write(cluster: Cluster, server: PostgresServer, table: str) -> bool:
    """Whether any client could commit a write on ``server`` now, whatever it asks for."""
    try:
        async with await psycopg.AsyncConnection.connect(
            cluster.url(server), autocommit=True
        ) as conn:
            await conn.execute("BEGIN READ WRITE")
            await conn.execute(f"INSERT INTO {table} VALUES (-1, 'sneaked in')")
            await conn.execute("COMMIT")
    except psycopg.Error:
        return False
    return True


def _recovering(cluster: Cluster, server: PostgresServer) -> bool:
    return cluster.sql(server, "SELECT pg_is_in_recovery()") == [(True,)]


def test_kill_primary_failover_loses_an_unreplicated_write_and_says_so(cluster: Cluster) -> None:
    old_server = cluster.primary

    async def body() -> None:
        async with await _open(cluster, old_server, cluster.standbys) as router:
            assert router.timeline == 1
            ddl = await router.execute("CREATE TABLE t_fo (id BIGINT PRIMARY KEY, v TEXT)")
            first = await router.execute("INSERT INTO t_fo VALUES (1, 'before')")
            await wait_until(
                lambda: (
                    all(n.position >= first.token.position for n in router.replicas)
                    and ddl.token.position <= first.token.position
                ),
                "standbys to replay",
            )
            # The standbys stop receiving: the next write exists on the primary only.
            for standby in cluster.standbys:
                cluster.sql(standby, "ALTER SYSTEM SET primary_conninfo = ''")
                cluster.sql(standby, "SELECT pg_reload_conf()")
            await wait_until(
                lambda: all(
                    cluster.sql(s, "SELECT count(*) FROM pg_stat_wal_receiver") == [(0,)]
                    for s in cluster.standbys
                ),
                "the standbys' WAL receivers to stop",
            )
            lost = (await router.execute("INSERT INTO t_fo VALUES (2, 'lost')")).token
            old = router.primary
            old_server.kill()  # SIGKILL
            with pytest.raises(StoreError):  # fails; never reported as success
                await router.execute("INSERT INTO t_fo VALUES (3, 'primary down')")

            task = asyncio.create_task(router.failover())
            await asyncio.sleep(0)  # let the failover start
            assert router.failing_over
            with pytest.raises(FailoverError) as during:
                await router.execute("INSERT INTO t_fo VALUES (4, 'during')")
            assert during.value.outcome is Outcome.INDETERMINATE
            new_name = await task
            assert new_name in ("pg1", "pg2") and router.primary.name == new_name
            new_server = cluster.standbys[["pg1", "pg2"].index(new_name)]
            follower = cluster.standbys[1 - ["pg1", "pg2"].index(new_name)]
            assert cluster.sql(new_server, "SELECT pg_is_in_recovery()") == [(False,)]
            # a token from before the fork is still good; the lost one fails, definitely
            assert await router.fetch_val("SELECT v FROM t_fo WHERE id = 1", token=first.token)
            with pytest.raises(ForkedTokenError, match="may have been lost") as caught:
                await router.fetch_val("SELECT v FROM t_fo WHERE id = 2", token=lost)
            assert caught.value.definite
            # the timeline is PostgreSQL's; timeline 1 ended before the lost write
            assert old.role is Role.FENCED and router.timeline == 2
            assert first.token.position <= router.history.ends[1] < lost.position
            # writes resume; once the new timeline passes the lost write's position, the
            # lost token still fails rather than being satisfied by other writes
            session = router.session()
            i = 10
            while session.token is None or session.token.position <= lost.position:
                await session.execute("INSERT INTO t_fo VALUES (:id, 'after')", {"id": i})
                i += 1
            assert session.token.timeline == 2
            assert await session.fetch_val("SELECT count(*) FROM t_fo") == 1 + i - 10
            with pytest.raises(ForkedTokenError):
                await router.fetch_val("SELECT count(*) FROM t_fo", token=lost)
            # the other standby was repointed and follows the new primary
            await wait_until(
                lambda: cluster.sql(follower, "SELECT count(*) FROM t_fo") == [(1 + i - 10,)],
                "the other standby to follow the new primary",
                bound=60,
            )

            # Every router derives the same timeline and history from the database.
            for _ in range(2):  # and again after a restart
                async with await _open(cluster, new_server, [follower]) as other:
                    assert other.timeline == 2 and other.history == router.history
                    await wait_until(
                        lambda: other.replicas[0].timeline == 2, "the follower's timeline"
                    )
                    assert await other.fetch_val(
                        "SELECT count(*) FROM t_fo", token=session.token
                    ) == (1 + i - 10)
                    with pytest.raises(ForkedTokenError):
                        await other.fetch_val("SELECT count(*) FROM t_fo", token=str(lost))

            # The old primary comes back with its lost write: the router fences it at
            # once (demoted and stopped), and it restarts as a read-only standby.
            old_server.start()
            await wait_until(
                lambda: not old.fence_pending and not old_server.is_running(),
                "the router to fence the old primary",
            )
            old_server.start()
            assert _recovering(cluster, old_server)
            assert not await _can_write(cluster, old_server, "t_fo")
            writes_before = old.writes
            await router.execute("INSERT INTO t_fo VALUES (5, 'later')")
            assert old.writes == writes_before
            assert cluster.sql(new_server, "SELECT count(*) FROM t_fo WHERE id < 10") == [(2,)]

    asyncio.run(body())


def test_planned_failover_fences_before_promoting(cluster: Cluster) -> None:
    old_server = cluster.primary
    # The router's user is not a superuser: it has the documented grants, all but the
    # one that reads the timeline history, which comes after the failover.
    create_role(cluster, "app", ROUTER_GRANTS)

    async def body() -> None:
        async with await _open(cluster, old_server, cluster.standbys, user="app") as router:
            await router.execute("CREATE TABLE t_plan (id BIGINT PRIMARY KEY, v TEXT)")
            tokens: list[CausalToken] = []
            for i in range(20):
                written = await router.execute("INSERT INTO t_plan VALUES (:id, 'ok')", {"id": i})
                tokens.append(written.token)
            # A client of the old primary, in the middle of a transaction.
            held = await psycopg.AsyncConnection.connect(cluster.url(old_server))
            await held.execute("INSERT INTO t_plan VALUES (100, 'held')")

            task = asyncio.create_task(router.failover())
            await wait_until(
                lambda: not all(_recovering(cluster, s) for s in cluster.standbys),
                "a standby to be promoted",
            )
            # Once anything is promoted, the old primary takes no commit from anyone.
            with pytest.raises(psycopg.OperationalError):
                await held.commit()
            await held.close()
            assert not await _can_write(cluster, old_server, "t_plan")
            new_name = await task
            new_server = cluster.standbys[["pg1", "pg2"].index(new_name)]
            assert not old_server.is_running() and not router.node("pg0").fence_pending
            # a planned failover loses no acknowledged write
            assert cluster.sql(new_server, "SELECT count(*), max(id) FROM t_plan") == [(20, 19)]

            # Without the right to read the timeline history, writes wait for it.
            assert router.history_pending is not None and "pg_read_file" in router.history_pending
            with pytest.raises(FailoverError) as pending:
                await router.execute("INSERT INTO t_plan VALUES (20, 'too early')")
            assert pending.value.definite
            follower = cluster.standbys[1 - ["pg1", "pg2"].index(new_name)]
            with pytest.raises(StoreUnavailableError, match="pg_read_file"):
                await _open(cluster, new_server, [follower], user="app")
            cluster.sql(new_server, "GRANT EXECUTE ON FUNCTION pg_read_file(text) TO app")
            await wait_until(lambda: router.history_pending is None, "the timeline history")
            assert router.timeline == 2 and router.history.ends[1] >= tokens[-1].position
            # tokens from before the failover stay good
            assert await router.fetch_val("SELECT count(*) FROM t_plan", token=tokens[-1]) == 20
            await router.execute("INSERT INTO t_plan VALUES (20, 'after')")

            # restarted by hand, the old primary is a standby that refuses every write
            old_server.start()
            assert _recovering(cluster, old_server)
            assert not await _can_write(cluster, old_server, "t_plan")

    asyncio.run(body())
