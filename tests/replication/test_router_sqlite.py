"""The router on the embedded setup: a SQLite primary and log-shipping SQLite replicas."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from multistore.errors import (
    ConflictError,
    InvalidValueError,
    Outcome,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from multistore.replication import (
    CausalToken,
    FailoverError,
    FailoverFailedError,
    ForkedTokenError,
    Health,
    InvalidTokenError,
    LogShipping,
    Role,
    Router,
    TokenSigner,
    replication_status,
)
from multistore.stores.relational._sqlite import SQLiteRelationalStore
from tests.replication.router_helpers import FAST, open_embedded, wait_until

DDL = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, data BLOB)"


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM items").fetchone()[0])


async def _caught_up(router: Router, token: CausalToken) -> None:
    await wait_until(
        lambda: all(router.shipper.position(n.name) >= token.position for n in router.replicas),
        "replicas to apply the write",
    )


def test_writes_go_to_the_primary_and_reads_spread_over_replicas(tmp_path: Path) -> None:
    async def body() -> None:
        async with await open_embedded(tmp_path) as router:
            await router.execute(DDL)
            last = await router.executemany(
                "INSERT INTO items (id, name, data) VALUES (:id, :name, :data)",
                [
                    {"id": i, "name": f"it'em {i}; DROP TABLE items", "data": b"\x00\xff"}
                    for i in range(20)
                ],
            )
            await _caught_up(router, last.token)
            for _ in range(10):
                assert await router.fetch_val("SELECT count(*) FROM items") == 20
            primary, r1, r2 = router.nodes
            assert primary.role is Role.PRIMARY and primary.reads == 0 and primary.writes == 2
            assert r1.reads == 5 and r2.reads == 5  # round robin
            row = await router.fetch_one("SELECT name, data FROM items WHERE id = 3")
            assert row is not None and row["name"] == "it'em 3; DROP TABLE items"
            assert row["data"] == b"\x00\xff"
            # a statement that writes is a write even through fetch_*: primary, shipped
            session = router.session()
            inserted = await session.fetch_all(
                "INSERT INTO items (id, name) VALUES (99, 'x') RETURNING id"
            )
            assert [r["id"] for r in inserted] == [99]
            assert primary.writes == 3 and session.token is not None
            await _caught_up(router, session.token)
        for name in ("primary", "replica1", "replica2"):
            assert _rows(tmp_path / f"{name}.db") == 21

    asyncio.run(body())


def test_reads_inside_a_transaction_stay_on_the_primary(tmp_path: Path) -> None:
    async def body() -> None:
        async with await open_embedded(tmp_path) as router:
            await router.execute(DDL)
            async with router.transaction() as tx:
                await tx.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
                assert await tx.fetch_val("SELECT count(*) FROM items") == 1
                async with tx.transaction() as sp:
                    await sp.execute("INSERT INTO items (id, name) VALUES (2, 'b')")
            assert tx.token is not None
            assert await router.fetch_val("SELECT count(*) FROM items", token=tx.token) == 2
            assert all(n.reads == 0 for n in router.nodes[:1])

    asyncio.run(body())


def _ryw_pairs(tmp_path: Path, pairs: int, *, with_token: bool) -> tuple[int, int]:
    """Write-then-read pairs while replica2 is paused (always stale) and replica1 applies
    with a small delay; returns (stale reads, reads served by replicas)."""

    async def body() -> tuple[int, int]:
        router = await open_embedded(tmp_path, shipping=LogShipping(delay=0.002, interval=0.02))
        try:
            await router.execute(DDL)
            await router.execute("INSERT INTO items (id, name) VALUES (0, 'seed')")
            await wait_until(lambda: router.shipper.position("replica2") >= 2, "seed shipped")
            await router.shipper.pause("replica2")
            session = router.session()
            stale = 0
            for i in range(1, pairs + 1):
                if with_token:
                    await session.execute(
                        "INSERT INTO items (id, name) VALUES (:id, :name)", {"id": i, "name": "v"}
                    )
                    row = await session.fetch_one(
                        "SELECT name FROM items WHERE id = :id", {"id": i}
                    )
                else:
                    await router.execute(
                        "INSERT INTO items (id, name) VALUES (:id, :name)", {"id": i, "name": "v"}
                    )
                    row = await router.fetch_one("SELECT name FROM items WHERE id = :id", {"id": i})
                stale += row is None
            by_replicas = sum(n.reads for n in router.replicas)
            router.shipper.resume("replica2")
            return stale, by_replicas
        finally:
            await router.close()

    return asyncio.run(body())


def test_session_reads_see_their_writes_while_replicas_lag(tmp_path: Path) -> None:
    stale, by_replicas = _ryw_pairs(tmp_path, 1000, with_token=True)
    assert stale == 0
    assert by_replicas > 500  # served by the replica that caught up, not all by the primary


def test_reads_without_the_token_are_stale(tmp_path: Path) -> None:
    stale, _ = _ryw_pairs(tmp_path, 100, with_token=False)
    assert stale >= 1


def test_token_travels_as_a_string(tmp_path: Path) -> None:
    async def body() -> None:
        async with await open_embedded(
            tmp_path, shipping=LogShipping(delay=0.3, interval=0.02)
        ) as router:
            await router.execute(DDL)
            written = await router.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
            header = str(written.token)
            assert CausalToken.parse(header) == written.token
            other = router.session(header)  # e.g. another process, token from a cookie
            assert await other.fetch_val("SELECT name FROM items WHERE id = 1") == "a"
            assert (
                await router.fetch_val("SELECT name FROM items WHERE id = 1", token=header) == "a"
            )

    asyncio.run(body())


def _gate(store: object, release: threading.Event) -> None:
    assert isinstance(store, SQLiteRelationalStore)
    store.native.create_function("wait_gate", 0, lambda: int(release.wait(30)))


def test_lagging_replica_gets_no_new_reads_but_running_reads_finish(tmp_path: Path) -> None:
    config = dataclasses.replace(FAST, max_lag=0.2, readmit_after=0.3)

    async def body() -> None:
        async with await open_embedded(tmp_path, config=config) as router:
            await router.execute(DDL)
            release = threading.Event()
            for node in router.replicas:
                _gate(node.store, release)
            long_read = asyncio.create_task(router.fetch_val("SELECT wait_gate()"))
            await wait_until(lambda: any(n.in_flight for n in router.replicas), "the long read")
            busy = next(n for n in router.replicas if n.in_flight)
            other = next(n for n in router.replicas if n is not busy)
            # The long read holds the replica's connection: it cannot apply, so it lags.
            await router.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
            await wait_until(lambda: busy.health.state is Health.LAGGING, "the replica to lag")
            reads_before = busy.reads
            for _ in range(30):
                await router.fetch_val("SELECT count(*) FROM items")
            assert busy.reads == reads_before and other.reads >= 30
            assert busy.in_flight == 1 and not long_read.done()
            release.set()
            assert await long_read == 1  # the running read finished normally
            await wait_until(lambda: busy.health.in_rotation, "the replica to come back")
            assert await router.fetch_val("SELECT count(*) FROM items", token=None) == 1

    asyncio.run(body())


def test_bounded_staleness_and_strong_reads(tmp_path: Path) -> None:
    async def body() -> None:
        async with await open_embedded(tmp_path) as router:
            await router.execute(DDL)
            await router.shipper.pause("replica2")
            written = await router.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
            with pytest.raises(StoreTimeoutError):
                await router.wait_replayed(written.token, within=0.2)
            r2 = router.replicas[1]
            await wait_until(lambda: r2.lag_seconds > 0.5, "replica2 to fall 0.5 s behind")
            await wait_until(lambda: router.shipper.position("replica1") >= 2, "replica1 applies")
            before = r2.reads
            for _ in range(10):
                assert await router.fetch_val("SELECT count(*) FROM items", max_staleness=0.5) == 1
            assert r2.reads == before
            primary_reads = router.primary.reads
            assert await router.fetch_val("SELECT count(*) FROM items", strong=True) == 1
            assert router.primary.reads == primary_reads + 1
            status = await replication_status(router)
            json.dumps(status)
            router.shipper.resume("replica2")
            await router.wait_replayed(str(written.token), within=10)
            assert router.shipper.position("replica2") >= written.token.position
            by_name = {n["name"]: n for n in status["nodes"]}
            assert by_name["primary"]["role"] == "primary"
            assert by_name["replica2"]["lag_seconds"] > 0.5
            assert by_name["replica2"]["lag_positions"] >= 1
            assert by_name["replica1"]["lag_positions"] == 0

    asyncio.run(body())


def test_failover_promotes_the_most_advanced_replica_and_fences_the_old_primary(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        async with await open_embedded(tmp_path) as router:
            await router.execute(DDL)
            first = await router.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
            await _caught_up(router, first.token)
            await router.shipper.pause("replica2")
            second = await router.execute("INSERT INTO items (id, name) VALUES (2, 'b')")
            await wait_until(
                lambda: router.shipper.position("replica1") >= second.token.position, "replica1"
            )
            old = router.primary
            await old.store.close()  # the primary crashes
            with pytest.raises(StoreError):
                await router.execute("INSERT INTO items (id, name) VALUES (3, 'lost')")

            # A write while the failover runs fails, indeterminate, and is never sent.
            task = asyncio.create_task(router.failover())
            await asyncio.sleep(0)
            assert router.failing_over
            with pytest.raises(FailoverError) as during:
                await router.execute("INSERT INTO items (id, name) VALUES (4, 'during')")
            assert during.value.outcome is Outcome.INDETERMINATE
            assert await task == "replica1"

            assert router.timeline == 2 and old.role is Role.FENCED
            session = router.session()
            await session.execute("INSERT INTO items (id, name) VALUES (5, 'after')")
            assert session.token is not None and session.token.timeline == 2
            assert await session.fetch_val("SELECT name FROM items WHERE id = 5") == "after"
            router.shipper.resume("replica2")  # follows the new primary
            await wait_until(
                lambda: router.shipper.position("replica2") >= session.token.position,  # type: ignore[union-attr]
                "replica2 to follow replica1",
            )
        assert _rows(tmp_path / "primary.db") == 2  # the old primary took nothing more
        assert _rows(tmp_path / "replica1.db") == 3
        assert _rows(tmp_path / "replica2.db") == 3

    asyncio.run(body())


def test_a_write_that_ran_on_the_replaced_primary_fails(tmp_path: Path) -> None:
    async def body() -> None:
        async with await open_embedded(tmp_path) as router:
            ddl = await router.execute(DDL)
            await _caught_up(router, ddl.token)
            with pytest.raises(FailoverError) as caught:
                async with router.transaction() as tx:
                    await tx.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
                    await router.failover()
            assert caught.value.outcome is Outcome.INDETERMINATE
            assert router.primary.name == "replica1"
            await router.execute("INSERT INTO items (id, name) VALUES (2, 'b')")
            assert await router.fetch_val("SELECT count(*) FROM items", strong=True) == 1
            old = router.node("primary")
            assert old.role is Role.FENCED and old.writes == 1  # the DDL only

    asyncio.run(body())


def test_automatic_failover(tmp_path: Path) -> None:
    config = dataclasses.replace(FAST, auto_failover=True, failures_to_failover=3)

    async def body() -> None:
        async with await open_embedded(tmp_path, config=config) as router:
            ddl = await router.execute(DDL)
            await _caught_up(router, ddl.token)
            await router.primary.store.close()
            await wait_until(lambda: router.timeline == 2, "the automatic failover")
            await router.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
            status = await replication_status(router)
            roles = {n["name"]: n["role"] for n in status["nodes"]}
            assert roles["primary"] == "fenced" and "primary" in roles.values()

    asyncio.run(body())


async def _lose_a_write(router: Router) -> tuple[CausalToken, CausalToken]:
    """A write every replica has, then one only the primary has, then the primary
    crashes and replica1 is promoted: (kept token, lost token)."""
    await router.execute(DDL)
    kept = await router.execute("INSERT INTO items (id, name) VALUES (1, 'kept')")
    await _caught_up(router, kept.token)
    for replica in router.replicas:
        await router.shipper.pause(replica.name)
    lost = await router.execute("INSERT INTO items (id, name) VALUES (2, 'lost')")
    await router.primary.store.close()  # the primary crashes before shipping it
    assert await router.failover() == "replica1"
    return kept.token, lost.token


def test_a_token_past_the_fork_fails_definitely_after_a_failover(tmp_path: Path) -> None:
    async def body() -> None:
        async with await open_embedded(tmp_path) as router:
            kept, lost = await _lose_a_write(router)
            assert await router.fetch_val("SELECT name FROM items WHERE id = 1", token=kept)
            with pytest.raises(ForkedTokenError, match="may have been lost") as caught:
                await router.fetch_val("SELECT name FROM items WHERE id = 2", token=lost)
            assert caught.value.definite
            assert router.timeline == 2 and router.history.ends == {1: kept.position}
            # New writes on the new timeline reuse the lost write's position...
            session = router.session()
            i = 10
            while session.token is None or session.token.position <= lost.position:
                await session.execute("INSERT INTO items (id, name) VALUES (:id, 'new')", {"id": i})
                i += 1
            # ...and the lost token still fails instead of being satisfied by them.
            for token in (lost, str(lost)):
                with pytest.raises(ForkedTokenError):
                    await router.fetch_val("SELECT count(*) FROM items", token=token)
            with pytest.raises(ForkedTokenError):
                await router.session(str(lost)).fetch_val("SELECT count(*) FROM items")
            with pytest.raises(ForkedTokenError):
                await router.wait_replayed(lost, within=5)
            assert await session.fetch_val("SELECT count(*) FROM items") == i - 10 + 1

    asyncio.run(body())


def test_the_timeline_comes_from_the_files_and_survives_a_restart(tmp_path: Path) -> None:
    async def body() -> tuple[CausalToken, CausalToken, CausalToken]:
        async with await open_embedded(tmp_path) as router:
            kept, lost = await _lose_a_write(router)
            router.shipper.resume("replica2")
            after = await router.execute("INSERT INTO items (id, name) VALUES (3, 'after')")
            await _caught_up(router, after.token)
        return kept, lost, after.token

    kept, lost, after = asyncio.run(body())

    async def reopened() -> None:
        async with await Router.open(
            f"sqlite:///{tmp_path / 'replica1.db'}",
            [f"sqlite:///{tmp_path / 'replica2.db'}"],
            config=FAST,
        ) as router:
            assert router.timeline == 2 and after.timeline == 2
            assert router.replicas[0].timeline == 2  # learnt from the shipped log
            assert await router.fetch_val("SELECT name FROM items WHERE id = 3", token=after)
            assert await router.fetch_val("SELECT name FROM items WHERE id = 1", token=kept)
            with pytest.raises(ForkedTokenError):
                await router.fetch_val("SELECT name FROM items WHERE id = 2", token=lost)

    asyncio.run(reopened())


def test_forged_tokens_are_refused_at_once(tmp_path: Path) -> None:
    config = dataclasses.replace(FAST, causal_wait=30.0)

    async def body() -> None:
        async with await open_embedded(tmp_path, config=config) as router:
            await router.execute(DDL)
            written = await router.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
            ahead = CausalToken(written.token.timeline, written.token.position + 1_000_000)
            with pytest.raises(InvalidTokenError, match="ahead of the primary") as caught:
                await router.fetch_val("SELECT count(*) FROM items", token=ahead)
            assert caught.value.definite
            assert sum(n.polls for n in router.nodes) == 0  # no replica was polled
            with pytest.raises(InvalidTokenError, match="timeline 7"):
                await router.fetch_val("SELECT count(*) FROM items", token="7:1")
            with pytest.raises(InvalidValueError):
                await router.fetch_val("SELECT count(*) FROM items", token="\uff11:\uff15")
            assert await router.fetch_val("SELECT name FROM items", token=written.token) == "a"

    asyncio.run(body())


def test_signed_tokens(tmp_path: Path) -> None:
    signer = TokenSigner(b"a secret of 32 bytes, not this!!")

    async def body() -> None:
        async with await Router.open(
            f"sqlite:///{tmp_path / 'primary.db'}",
            [f"sqlite:///{tmp_path / 'replica1.db'}"],
            config=FAST,
            shipping=LogShipping(delay=0.2, interval=0.02),
            signer=signer,
        ) as router:
            await router.execute(DDL)
            session = router.session()
            await session.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
            token = session.token
            assert token is not None and signer.verify(token)
            header = str(token)
            assert await router.session(header).fetch_val("SELECT name FROM items") == "a"
            for bad in (token.unsigned, header[:-1] + ("0" if header[-1] != "0" else "1")):
                with pytest.raises(InvalidTokenError, match="signature"):
                    await router.fetch_val("SELECT name FROM items", token=bad)

    asyncio.run(body())


def test_bounded_staleness_reads_leave_replicas_once_the_primary_stops_answering(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        async with await open_embedded(tmp_path) as router:
            ddl = await router.execute(DDL)
            await _caught_up(router, ddl.token)
            await router.primary.store.close()  # no more primary probes
            await wait_until(
                lambda: (
                    router.primary_failures and time.monotonic() - router.primary.probed_at > 0.6
                ),
                "0.6 s since the last good primary probe",
            )
            reads = sum(n.reads for n in router.replicas)
            with pytest.raises(StoreUnavailableError):  # only the primary could serve it
                await router.fetch_val("SELECT count(*) FROM items", max_staleness=0.5)
            assert sum(n.reads for n in router.replicas) == reads
            # reads without a bound still go to the replicas, which stay in rotation
            assert await router.fetch_val("SELECT count(*) FROM items") == 0
            assert sum(n.reads for n in router.replicas) == reads + 1

    asyncio.run(body())


def test_a_replica_whose_lag_is_unknown_serves_no_reads(tmp_path: Path) -> None:
    async def seed() -> None:
        async with await open_embedded(tmp_path, replicas=1) as router:
            await router.execute(DDL)
            written = await router.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
            await _caught_up(router, written.token)

    asyncio.run(seed())

    async def body() -> None:
        # replica2 is a new, empty file that will not get an entry for a minute: it is
        # behind every sample of the primary the router has, so its lag is unknown.
        async with await Router.open(
            f"sqlite:///{tmp_path / 'primary.db'}",
            [f"sqlite:///{tmp_path / 'replica1.db'}", f"sqlite:///{tmp_path / 'replica2.db'}"],
            config=FAST,
            shipping=LogShipping(delay=60.0, interval=0.02),
        ) as router:
            r1, r2 = router.replicas
            opened = r2.probed_at
            await wait_until(lambda: r2.probed_at > opened + 1.0, "a second of probes")
            assert not r2.health.in_rotation and router.staleness_bound(r2) == math.inf
            for _ in range(10):
                await router.fetch_val("SELECT count(*) FROM items", max_staleness=3600)
                await router.fetch_val("SELECT count(*) FROM items")
            assert r2.reads == 0 and r1.reads == 20
            status = await replication_status(router)
            by_name = {n["name"]: n for n in status["nodes"]}
            assert by_name["replica2"]["lag_seconds"] is None
            assert by_name["replica2"]["staleness_bound"] is None

    asyncio.run(body())


def _since(moment: float) -> float:
    return time.monotonic() - moment


def test_a_second_failover_never_reuses_a_timeline(tmp_path: Path) -> None:
    """A replica promoted before it heard of the current timeline still starts a newer
    one, forking off the current one: a token of a write it never got fails
    definitely instead of being satisfied by another write at that position (found by
    the schedule explorer: the second promotion started a second timeline 2)."""

    async def body() -> None:
        async with await open_embedded(tmp_path) as router:
            await router.execute(DDL)
            kept = await router.execute("INSERT INTO items (id, name) VALUES (1, 'kept')")
            await _caught_up(router, kept.token)
            await router.shipper.pause("replica2")  # it will not hear of timeline 2
            assert await router.failover() == "replica1"
            written = await router.execute("INSERT INTO items (id, name) VALUES (2, 'on 2')")
            assert written.token.timeline == 2
            assert await router.failover() == "replica2"
            assert router.timeline == 3
            assert router.history.ends[2] == kept.token.position  # where replica2 stopped
            with pytest.raises(ForkedTokenError):
                await router.fetch_val("SELECT name FROM items WHERE id = 2", token=written.token)
            assert await router.fetch_val("SELECT name FROM items WHERE id = 1", token=kept.token)

    asyncio.run(body())


def test_a_token_no_replica_is_known_to_have_goes_to_the_primary_at_once(
    tmp_path: Path,
) -> None:
    """By default a read-your-writes read does not wait for a replica: if none is
    known to have replayed the token, the primary serves it, and no replica is polled
    (the wait is opt-in with causal_wait)."""

    async def body() -> None:
        slow = LogShipping(delay=600.0, interval=0.02)  # the replicas never get the write
        async with await Router.open(
            f"sqlite:///{tmp_path / 'primary.db'}",
            [f"sqlite:///{tmp_path / 'replica.db'}"],
            shipping=slow,
        ) as router:  # the default RouterConfig
            await router.execute(DDL)
            written = await router.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
            primary, replica = router.nodes
            polls = replica.polls
            name = "SELECT name FROM items WHERE id = 1"
            assert await router.fetch_val(name, token=written.token) == "a"
            assert (primary.reads, replica.reads, replica.polls) == (1, 0, polls)
            # a bound given: the replicas are polled until it runs out, then the primary
            assert await router.fetch_val(name, token=written.token, causal_wait=0.2) == "a"
            assert (primary.reads, replica.reads) == (2, 0) and replica.polls > polls

    asyncio.run(body())


def test_a_planned_failover_waits_for_a_lagging_replica_and_loses_no_write(
    tmp_path: Path,
) -> None:
    """The fence tells the last entry of the old primary; the promoted replica has it."""

    async def body() -> None:
        shipping = LogShipping(delay=1.0, interval=0.02)
        async with await open_embedded(tmp_path, shipping=shipping) as router:
            ddl = await router.execute(DDL)
            await _caught_up(router, ddl.token)
            last = await router.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
            # no replica has the write yet: it is held back a second
            assert all(
                router.shipper.position(n.name) < last.token.position for n in router.replicas
            )
            assert await router.failover() in ("replica1", "replica2")
            got = await router.fetch_val("SELECT name FROM items WHERE id = 1", strong=True)
            assert got == "a"
            assert (
                await router.fetch_val("SELECT name FROM items WHERE id = 1", token=last.token)
                == "a"
            )

    asyncio.run(body())


async def _stale_router(router: Router, tmp_path: Path) -> Router:
    """Create the table, then open a second router on the same primary, as another
    process would: its own router, reading nothing from the replicas (the first ships)."""
    ddl = await router.execute(DDL)
    await _caught_up(router, ddl.token)
    return await Router.open(f"sqlite:///{tmp_path / 'primary.db'}", [], config=FAST)


def test_a_second_router_on_the_old_topology_cannot_write_to_the_fenced_primary(
    tmp_path: Path,
) -> None:
    """Another process that still names the old primary (its router never saw the
    failover) has its writes refused by the file itself, not acknowledged and lost."""

    async def body() -> None:
        async with await open_embedded(tmp_path) as router:
            async with await _stale_router(router, tmp_path) as stale:
                await stale.execute("INSERT INTO items (id, name) VALUES (1, 'before')")
                assert await router.failover() == "replica1"
                with pytest.raises(ConflictError, match="fenced by a failover") as refused:
                    await stale.execute("INSERT INTO items (id, name) VALUES (2, 'after')")
                assert refused.value.outcome is Outcome.DEFINITE
            assert await router.fetch_val("SELECT count(*) FROM items", strong=True) == 1
        assert _rows(tmp_path / "primary.db") == 1  # the refused write left nothing
        assert _rows(tmp_path / "replica1.db") == 1

    asyncio.run(body())


def test_a_failover_with_no_replica_left_fences_nothing(tmp_path: Path) -> None:
    """With nothing to promote, the primary is not fenced: it keeps taking writes."""

    async def body() -> None:
        async with await open_embedded(tmp_path, replicas=1) as router:
            ddl = await router.execute(DDL)
            await _caught_up(router, ddl.token)
            assert await router.failover() == "replica1"  # the old primary is fenced
            with pytest.raises(FailoverFailedError, match="nothing was fenced or promoted"):
                await router.failover()
            assert router.primary.name == "replica1"
            await router.execute("INSERT INTO items (id, name) VALUES (1, 'still')")
            assert await router.fetch_val("SELECT name FROM items WHERE id = 1") == "still"

    asyncio.run(body())


def test_a_client_cannot_lift_the_fence_through_a_router(tmp_path: Path) -> None:
    """A write that deletes the fence row or drops its triggers is refused like any
    other, and rolled back whole, so the writes after it are refused too."""

    async def body() -> None:
        router = await open_embedded(tmp_path)
        async with router, await _stale_router(router, tmp_path) as stale:
            assert await router.failover() == "replica1"
            for lift in (
                "DELETE FROM multistore_fence",
                "DROP TRIGGER multistore_fenced",
                "DROP TRIGGER multistore_fence_kept",
                "DROP TRIGGER multistore_fence_kept; DELETE FROM multistore_fence",
            ):
                with pytest.raises(ConflictError, match="fenced by a failover"):
                    await stale.execute_script(lift)
            with pytest.raises(ConflictError, match="fenced by a failover"):
                async with stale.transaction() as tx:
                    await tx.execute("DROP TRIGGER multistore_fenced")
                    await tx.execute("INSERT INTO items (id, name) VALUES (1, 'lost')")
            with pytest.raises(ConflictError, match="fenced by a failover"):
                await stale.execute("INSERT INTO items (id, name) VALUES (2, 'lost')")
        assert _rows(tmp_path / "primary.db") == 0
        with sqlite3.connect(tmp_path / "primary.db") as db:
            assert db.execute("SELECT count(*) FROM multistore_fence").fetchone()[0] == 1

    asyncio.run(body())


def test_a_fence_kept_waiting_by_another_writer_promotes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another router's transaction holds the old primary's write lock past the fence's
    bound: the failover fails and promotes nothing, so the write that transaction then
    commits (and its router acknowledges) is not lost with the old primary.

    The fence's bound (shortened here) runs out before the file's busy timeout, as with
    the defaults (30 s each, the bound started first)."""
    monkeypatch.setattr("multistore.replication._failover.FENCE_TIMEOUT", 0.3)

    async def body() -> None:
        async with await Router.open(
            f"sqlite:///{tmp_path / 'primary.db'}?timeout=1",
            [f"sqlite:///{tmp_path / f'replica{i}.db'}" for i in (1, 2)],
            config=FAST,
            shipping=LogShipping(delay=0.0, interval=0.02),
        ) as router:
            async with await _stale_router(router, tmp_path) as stale:
                entered, release = asyncio.Event(), asyncio.Event()

                async def hold() -> CausalToken:
                    async with stale.transaction() as tx:
                        await tx.execute("INSERT INTO items (id, name) VALUES (1, 'held')")
                        entered.set()
                        await release.wait()
                    assert tx.token is not None
                    return tx.token

                holder = asyncio.create_task(hold())
                await entered.wait()
                try:
                    with pytest.raises(FailoverFailedError, match="nothing was promoted"):
                        await router.failover()
                finally:
                    release.set()
                    acknowledged = await holder
            assert router.primary.name == "primary"
            assert {n.name for n in router.replicas} == {"replica1", "replica2"}
            # the acknowledged write is on the primary, which still takes writes
            assert await router.fetch_val("SELECT name FROM items WHERE id = 1", strong=True)
            await router.execute("INSERT INTO items (id, name) VALUES (2, 'later')")
            await router.wait_replayed(acknowledged)
            assert await router.failover() == "replica1"
            got = await router.fetch_all("SELECT id FROM items ORDER BY id", strong=True)
            assert [r["id"] for r in got] == [1, 2]

    asyncio.run(body())


def test_a_replica_failing_after_the_precheck_leaves_no_primary_until_a_failover_succeeds(
    tmp_path: Path,
) -> None:
    """The replica answered (an embedded replica's position is its shipper's), then its
    promotion failed: the old primary is fenced already, so the router has no primary
    and refuses writes until a failover to another replica succeeds; nothing is lost."""

    async def body() -> None:
        async with await open_embedded(tmp_path) as router:
            ddl = await router.execute(DDL)
            written = await router.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
            await router.wait_replayed(written.token)
            await router.node("replica1").store.close()  # it goes away after answering
            with pytest.raises(FailoverFailedError, match="promoting replica1 failed"):
                await router.failover()
            roles = {n.name: n.role for n in router.nodes}
            assert roles == {
                "primary": Role.FENCED,
                "replica1": Role.REBUILD,
                "replica2": Role.REPLICA,
            }
            with pytest.raises(FailoverError, match="no primary"):
                await router.execute("INSERT INTO items (id, name) VALUES (2, 'b')")
            assert _rows(tmp_path / "primary.db") == 1  # the refused write left nothing
            assert await router.failover() == "replica2"
            await router.execute("INSERT INTO items (id, name) VALUES (2, 'b')")
            got = await router.fetch_all("SELECT id FROM items ORDER BY id", strong=True)
            assert [r["id"] for r in got] == [1, 2]
            assert ddl.token.timeline == 1 and router.timeline == 2

    asyncio.run(body())
