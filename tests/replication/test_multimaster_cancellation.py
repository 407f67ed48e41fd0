"""A multi-master node's transaction and its in-memory note of it are one unit.

A local write, a batch of received changes and a retry of held-back ones each commit
one transaction, after which the node object takes note (its sequence number, log
head, received vector, held-back count and cached states). A cancellation that lands
while the commit runs (an ``asyncio.timeout`` around the call, a server shutting down)
must not split the two: the commit is waited for, the node takes note, and the
cancellation is raised then. A commit whose reply is lost (an indeterminate error
after it committed) has the node read its state back from the store.

Nodes are real embedded SQLite nodes; a second sqlite3 connection to a node's file
watches what it committed, so a cancellation is aimed between the commit and the
note without depending on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from multistore.core import LWW
from multistore.errors import Outcome, StoreError
from multistore.replication import MultiMasterNode, Replicator
from multistore.stores.relational import Transaction
from tests.replication.mm_helpers import ManualClock, assert_converged

ATTEMPTS = 200


def _count(spy: sqlite3.Connection, sql: str, *params: object) -> int:
    return int(spy.execute(sql, params).fetchone()[0])


async def _cancel_between_commit_and_note(
    op: Callable[[], Awaitable[object]], committed: Callable[[], bool], noted: Callable[[], bool]
) -> bool:
    """Run ``op()`` and cancel it once its transaction has committed (``committed()``)
    and before the node took note (``noted()``). True when that cancellation landed
    (the call raised CancelledError); False when the call ended before it could."""
    task = asyncio.ensure_future(op())
    while not task.done():
        await asyncio.sleep(0)
        if committed():
            if not noted():
                task.cancel()
            break
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


async def _open(tmp: Path, name: str, **options: object) -> MultiMasterNode:
    return await MultiMasterNode.open(
        f"sqlite:///{tmp}/{name}.db",
        name,
        resolver=LWW(),
        **options,  # type: ignore[arg-type]
    )


def test_a_put_cancelled_at_its_commit_still_replicates_and_the_node_writes_on(
    tmp_path: Path,
) -> None:
    """ "A change is logged if and only if it happened" and "convergence once the network
    heals (sync() returned)". A local put cancelled while its commit runs has committed
    its state and log row; the node must count it: ``node.seq`` covers it, the next put
    takes the next sequence number, and the replicator sends the committed change."""

    async def body() -> None:
        a, b = await _open(tmp_path, "a"), await _open(tmp_path, "b")
        spy = sqlite3.connect(tmp_path / "a.db")
        try:
            for attempt in range(ATTEMPTS):
                key, seq = f"cancelled-{attempt}", a.seq
                if await _cancel_between_commit_and_note(
                    lambda k=key, v=attempt: a.put(k, v),  # type: ignore[misc]
                    lambda s=seq: (
                        _count(  # type: ignore[misc]
                            spy, "SELECT count(*) FROM mm_log WHERE origin = 'a' AND seq = ?", s + 1
                        )
                        > 0
                    ),
                    lambda s=seq: a.seq > s,  # type: ignore[misc]
                ):
                    break
            else:
                raise TimeoutError("no put was cancelled between its commit and its note")
            assert a.seq == seq + 1  # the node counted the change it committed
            assert await a.values(key) == (attempt,)
            await Replicator([a, b]).sync()
            assert await b.values(key) == (attempt,)
            await a.put("next", 1)  # the next sequence number is free
            await Replicator([a, b]).sync()
            await assert_converged([a, b])
        finally:
            spy.close()
            await a.close()
            await b.close()

    asyncio.run(body())


def test_a_batch_cancelled_at_its_commit_is_counted_as_received(tmp_path: Path) -> None:
    """A batch of received changes cancelled while its commit runs: the node has the
    changes (state and log) and must say so (``received``), so the same changes are not
    taken twice and it relays them to a third node."""

    async def body() -> None:
        a, b, c = [await _open(tmp_path, name) for name in "abc"]
        spy = sqlite3.connect(tmp_path / "a.db")
        try:
            for attempt in range(ATTEMPTS):
                change = await b.put(f"from-b-{attempt}", attempt)
                if await _cancel_between_commit_and_note(
                    lambda ch=change: a.apply_batch("b", [ch]),  # type: ignore[misc]
                    lambda s=change.seq: (
                        _count(  # type: ignore[misc]
                            spy, "SELECT count(*) FROM mm_log WHERE origin = 'b' AND seq = ?", s
                        )
                        > 0
                    ),
                    lambda s=change.seq: a.received_from("b") >= s,  # type: ignore[misc]
                ):
                    break
            else:
                raise TimeoutError("no batch was cancelled between its commit and its note")
            assert a.received_from("b") == b.seq
            # offered again, the change is a duplicate (not a second log row)
            await a.apply_batch("b", [change])
            assert a.statistics().duplicates >= 1
            # a relays b's changes to c (asked for what c lacks, as a relay is)
            await c.apply_batch("a", await a.changes_for(c.received))
            assert c.received_from("b") == b.seq
            assert await c.values(change.key) == (attempt,)
            await a.put("next", 1)
            await Replicator([a, b, c]).sync()
            await assert_converged([a, b, c])
        finally:
            spy.close()
            for node in (a, b, c):
                await node.close()

    asyncio.run(body())


def test_a_retry_cancelled_at_its_commit_releases_what_it_applied(tmp_path: Path) -> None:
    """``retry_pending`` cancelled while its commit runs: the held-back change is applied
    and released in the store, and the node must count it released (``pending_count``),
    not try it again."""
    minute = 60_000

    async def body() -> None:
        honest, fast = ManualClock(), ManualClock()
        a = await _open(tmp_path, "a", now_ms=honest, max_skew_ms=minute)
        b = await _open(tmp_path, "b", now_ms=fast, max_skew_ms=minute)
        spy = sqlite3.connect(tmp_path / "a.db")
        try:
            for attempt in range(ATTEMPTS):
                fast.now = honest.now + 10 * minute  # b's clock runs ten minutes ahead
                change = await b.put(f"ahead-{attempt}", attempt)
                await a.apply_batch("b", [change])
                assert a.pending_count == 1  # held back by the skew guard
                honest.now = fast.now  # a's clock catches up
                if await _cancel_between_commit_and_note(
                    a.retry_pending,
                    lambda: _count(spy, "SELECT count(*) FROM mm_pending") == 0,
                    lambda: a.pending_count == 0,
                ):
                    break
            else:
                raise TimeoutError("no retry was cancelled between its commit and its note")
            assert a.pending_count == 0
            assert await a.rejected() == []
            assert await a.values(change.key) == (attempt,)
            await Replicator([a, b]).sync()
            await assert_converged([a, b])
        finally:
            spy.close()
            await a.close()
            await b.close()

    asyncio.run(body())


def test_a_commit_whose_reply_is_lost_has_the_node_read_its_state_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put whose transaction commits but whose caller sees an indeterminate error (the
    reply lost, as a connection that drops after COMMIT was sent): the node reads its
    sequence number, log head and states back from the store, so it numbers the next
    change after the committed one and offers the committed one to its peers."""

    async def body() -> None:
        a, b = await _open(tmp_path, "a"), await _open(tmp_path, "b")
        real = a.store.transaction

        @contextlib.asynccontextmanager
        async def reply_lost() -> AsyncIterator[Transaction]:
            async with real() as tx:
                yield tx
            monkeypatch.setattr(a.store, "transaction", real)  # once
            raise StoreError("the reply to COMMIT was lost", outcome=Outcome.INDETERMINATE)

        try:
            await a.put("before", 0)
            monkeypatch.setattr(a.store, "transaction", reply_lost)
            with pytest.raises(StoreError) as lost:
                await a.put("lost", 1)
            assert not lost.value.definite
            assert a.seq == 2 and await a.values("lost") == (1,)  # it had committed
            await a.put("after", 2)
            assert a.seq == 3
            await Replicator([a, b]).sync()
            assert await b.values("lost") == (1,)
            await assert_converged([a, b])
        finally:
            await a.close()
            await b.close()

    asyncio.run(body())


def test_a_put_cancelled_at_any_step_leaves_the_node_agreeing_with_its_store(
    tmp_path: Path,
) -> None:
    """Cancel a put after 0, 1, 2, … turns of the event loop, until one finishes first:
    wherever the cancellation lands, the node's count of its changes is what its store
    holds, the key is there exactly when the change was counted, and the node writes
    on."""

    async def body() -> None:
        a = await _open(tmp_path, "a")
        spy = sqlite3.connect(tmp_path / "a.db")
        try:
            for turns in range(10_000):
                key = f"k{turns}"
                task = asyncio.ensure_future(a.put(key, turns))
                for _ in range(turns):
                    await asyncio.sleep(0)
                finished = task.done()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                logged = _count(spy, "SELECT count(*) FROM mm_log WHERE origin = 'a'")
                assert a.seq == logged, f"cancelled after {turns} turns"
                assert (await a.values(key) != ()) == (
                    _count(spy, "SELECT count(*) FROM mm_log WHERE key = ?", key) == 1
                )
                if finished:
                    break
            await a.put("next", 1)
            assert a.seq == _count(spy, "SELECT count(*) FROM mm_log WHERE origin = 'a'")
        finally:
            spy.close()
            await a.close()

    asyncio.run(body())
