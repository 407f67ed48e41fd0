"""Failover on real PostgreSQL: SIGKILL the primary, promote a standby, fence the old one."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import pytest

from multistore.errors import Outcome, StoreError
from multistore.replication import FailoverError, Role, Router
from tests.replication.pg_cluster import Cluster, start_cluster
from tests.replication.router_helpers import FAST, wait_until

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from start_cluster()


def test_kill_primary_failover_resume_writes_and_fence_the_old_primary(cluster: Cluster) -> None:
    config = dataclasses.replace(FAST, probe_timeout=0.5)
    old_server = cluster.primary

    async def body() -> None:
        async with await Router.open(
            cluster.url(old_server),
            [cluster.url(s) for s in cluster.standbys],
            config=config,
            names=["pg0", "pg1", "pg2"],
        ) as router:
            ddl = await router.execute("CREATE TABLE t_fo (id BIGINT PRIMARY KEY, v TEXT)")
            first = await router.execute("INSERT INTO t_fo VALUES (1, 'before')")
            await wait_until(
                lambda: (
                    all(n.position >= first.token.position for n in router.replicas)
                    and ddl.token.position <= first.token.position
                ),
                "standbys to replay",
            )
            old = router.primary
            old_server.kill()  # SIGKILL
            with pytest.raises(StoreError):  # fails; never reported as success
                await router.execute("INSERT INTO t_fo VALUES (2, 'primary down')")

            task = asyncio.create_task(router.failover())
            await asyncio.sleep(0)  # let the failover start
            assert router.failing_over
            with pytest.raises(FailoverError) as during:
                await router.execute("INSERT INTO t_fo VALUES (3, 'during')")
            assert during.value.outcome is Outcome.INDETERMINATE
            new_name = await task
            assert new_name in ("pg1", "pg2") and router.primary.name == new_name
            assert old.role is Role.FENCED and router.generation == 2
            new_server = cluster.standbys[["pg1", "pg2"].index(new_name)]
            follower = cluster.standbys[1 - ["pg1", "pg2"].index(new_name)]
            assert cluster.sql(new_server, "SELECT pg_is_in_recovery()") == [(False,)]

            # writes resume, and a session reads its own write after the failover
            session = router.session()
            await session.execute("INSERT INTO t_fo VALUES (4, 'after')")
            assert await session.fetch_val("SELECT v FROM t_fo WHERE id = 4") == "after"
            # the other standby was repointed and follows the new primary
            await wait_until(
                lambda: cluster.sql(follower, "SELECT count(*) FROM t_fo WHERE id = 4") == [(1,)],
                "the other standby to follow the new primary",
                bound=60,
            )

            # the old primary comes back: fenced on the server, and no writes through the router
            old_server.start()
            await wait_until(
                lambda: cluster.sql(old_server, "SHOW default_transaction_read_only") == [("on",)],
                "the router to fence the restarted old primary",
                bound=60,
            )
            writes_before = old.writes
            for i in range(5, 15):
                await router.execute("INSERT INTO t_fo VALUES (:id, 'later')", {"id": i})
            assert old.writes == writes_before
            assert cluster.sql(old_server, "SELECT max(id) FROM t_fo") == [(1,)]
            assert cluster.sql(new_server, "SELECT count(*) FROM t_fo") == [(12,)]  # 1, 4, 5..14

    asyncio.run(body())
