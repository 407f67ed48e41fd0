"""The router following Patroni on a real cluster: three PostgreSQL members under
Patroni with a three-member etcd, all throwaway processes on loopback.

Patroni decides every failover here; the router only adopts the leader Patroni names.
Waits are bounded and poll conditions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from multistore.errors import Outcome, StoreError
from multistore.lab._patroni import PatroniCluster, PatroniMember
from multistore.replication import CausalToken, ForkedTokenError, PatroniRouter, Role
from tests.replication.router_helpers import FAST

pytestmark = pytest.mark.server

T = TypeVar("T")
CONFIG = dataclasses.replace(FAST, probe_interval=0.2, probe_timeout=1.0)


async def until_ok(op: Callable[[], Awaitable[T]], what: str, within: float = 90.0) -> T:
    """``op()`` retried on store errors until it succeeds, within a bound."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await op()
        except StoreError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {within:g} s: {exc}") from exc
        await asyncio.sleep(0.1)


async def _open(cluster: PatroniCluster) -> PatroniRouter:
    # Under load Patroni may be between leaders (its leader key expired): retried.
    return await until_ok(
        lambda: PatroniRouter.open_patroni(
            cluster.rest_endpoints(), cluster.url("postgres") + "?connect_timeout=2", config=CONFIG
        ),
        "a router on the leader Patroni names",
    )


def test_the_router_starts_on_the_leader_patroni_names(patroni_cluster: PatroniCluster) -> None:
    async def main() -> None:
        router = await _open(patroni_cluster)
        try:
            leader = patroni_cluster.leader()
            assert leader is not None
            assert router.primary.name == leader.member
            assert sorted(n.name for n in router.nodes) == ["pg0", "pg1", "pg2"]
            assert not router.config.auto_failover  # Patroni decides
            await router.execute("CREATE TABLE IF NOT EXISTS t_start (id INT PRIMARY KEY)")
        finally:
            await router.close()

    asyncio.run(main())


def test_kill_the_leader_patroni_elects_another_and_writes_reach_it(
    patroni_cluster: PatroniCluster,
) -> None:
    killed: list[PatroniMember] = []

    async def main() -> None:
        router = await _open(patroni_cluster)
        try:
            # The leader the router writes to (Patroni may have changed it since the
            # last test, so it is not asked separately).
            old = patroni_cluster.member(router.primary.name)
            await router.execute("CREATE TABLE IF NOT EXISTS t_ha (id INT PRIMARY KEY, v TEXT)")
            first = await router.execute("INSERT INTO t_ha VALUES (1, 'before')")
            await router.wait_replayed(first.token, within=30)
            timeline = router.timeline
            killed.append(old)
            old.kill()  # Patroni and its PostgreSQL, SIGKILL
            with pytest.raises(StoreError) as failed:
                await router.execute("INSERT INTO t_ha VALUES (2, 'leader down')")
            assert failed.value.outcome is Outcome.INDETERMINATE or failed.value.definite
            # Writes go through once Patroni has a new leader and the router adopted it.
            await until_ok(
                lambda: router.execute(
                    "INSERT INTO t_ha VALUES (3, 'after') ON CONFLICT DO NOTHING"
                ),
                "a write through the router after the failover",
            )
            new = patroni_cluster.leader()
            assert new is not None and new is not old
            assert router.primary.name == new.member
            assert router.node(old.member).role is Role.REPLICA
            assert router.timeline > timeline
            # The token of a write the new leader has still gives read-your-writes.
            session = router.session(first.token)
            assert await session.fetch_val("SELECT v FROM t_ha WHERE id = 1") == "before"
            # A token past the point the new timeline branched off names a write the
            # new leader may not have: refused, never answered without it.
            end = router.history.ends[timeline]
            assert first.token.timeline == timeline and first.token.position <= end
            lost = CausalToken(timeline, end + 4096)
            with pytest.raises(ForkedTokenError) as refused:
                await router.fetch_val("SELECT v FROM t_ha WHERE id = 1", token=lost)
            assert refused.value.outcome is Outcome.DEFINITE
        finally:
            await router.close()

    try:
        asyncio.run(main())
    finally:
        for member in killed:
            member.start()
        patroni_cluster.wait_streaming()


def test_a_switchover_through_the_router(patroni_cluster: PatroniCluster) -> None:
    async def main() -> None:
        router = await _open(patroni_cluster)
        try:
            timeline = router.timeline
            # Patroni refuses (412) while no replica is a good candidate yet; under load
            # it may also answer 503 for a switchover it then performs, so a retry can
            # switch twice: the timeline, not the name, shows that a switchover ran.
            new = await until_ok(lambda: router.failover(), "a switchover Patroni accepts")
            assert router.primary.name == new and router.timeline > timeline
            leader = patroni_cluster.leader()
            assert leader is not None and leader.member == new
            await until_ok(
                lambda: router.execute("CREATE TABLE IF NOT EXISTS t_sw (id INT)"),
                "a write after the switchover",
            )
        finally:
            await router.close()

    asyncio.run(main())
    patroni_cluster.wait_streaming()


def test_a_retried_switchover_to_a_member_that_leads_already_succeeds(
    patroni_cluster: PatroniCluster,
) -> None:
    """A switchover to ``b`` ran, but its caller saw an error (Patroni answered 503
    under load, or the answer was lost). The retry, ``failover(candidate=b)``, finds b
    leading: it returns b without asking Patroni for another switchover (which Patroni
    refuses, b being the leader already)."""

    async def main() -> None:
        router = await _open(patroni_cluster)
        try:
            timeline, old = router.timeline, router.primary.name
            b = next(n.name for n in router.nodes if n.role is Role.REPLICA)
            assert router.patroni is not None
            patroni = router.patroni

            async def switched_to_b() -> None:
                leader = patroni_cluster.leader()
                if leader is None or leader.member != b:
                    await patroni.switchover(old, b)  # the first call, its answer "lost"

            await until_ok(switched_to_b, "Patroni switches over to b")
            new = await until_ok(lambda: router.failover(b), "the retried switchover")
            assert new == b and router.primary.name == b
            leader = patroni_cluster.leader()
            assert leader is not None and leader.member == b
            assert router.timeline == timeline + 1  # one switchover, not two
        finally:
            await router.close()

    asyncio.run(main())
    patroni_cluster.wait_streaming()
