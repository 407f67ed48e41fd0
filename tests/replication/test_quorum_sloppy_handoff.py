"""Hinted handoff in a sloppy quorum past ``hint_window``: a stand-in is no replica of
the key, so anti-entropy (which compares the ranges two nodes both replicate) never
looks at its copy. A hint that names a stand-in is therefore kept whatever the window,
and one past the window is dropped only once the stand-in's copy is back on the home.

Nodes are real embedded SQLite nodes; the coordinator's clock is a number the test
moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from multistore.core._quorum import QuorumConfig
from multistore.errors import Outcome
from multistore.replication import QuorumCluster, QuorumError, SQLiteNode, WriteResult

SLOPPY = QuorumConfig(n=3, r=2, w=2, sloppy=True)


async def _sloppy(tmp: Path, now: list[float], **options: object) -> QuorumCluster:
    return await QuorumCluster.embedded(
        tmp,
        5,
        config=SLOPPY,
        hint_window=60.0,
        clock=lambda: now[0],
        **options,  # type: ignore[arg-type]
    )


def _node(cluster: QuorumCluster, name: str) -> SQLiteNode:
    node = cluster.node(name)
    assert isinstance(node, SQLiteNode)
    return node


async def _written_by_stand_ins(cluster: QuorumCluster) -> WriteResult:
    """Write ``cart`` while its three homes are down (two stand-ins acknowledge it),
    then bring the homes back."""
    homes = cluster.preference_list("cart")
    for name in homes:
        _node(cluster, name).set_down(True)
    written = await cluster.put("cart", {"apple": 1})
    assert len(written.acks) == 2 and not set(written.acks) & set(homes)
    for name in homes:
        _node(cluster, name).set_down(False)
    return written


def test_anti_entropy_repairs_what_dropped_hints_would_have_carried(tmp_path: Path) -> None:
    """Guarantee 6: a hint older than ``hint_window`` at delivery "is dropped and
    counted, and anti-entropy repairs what it would have carried". A write made while
    its three homes are down is acknowledged by two stand-ins (W=2); its hints expire.
    The stand-ins' copies go back to their homes as the hints are dropped, and
    anti-entropy brings the third home up to date: every read finds the write. (The
    copies stayed on the stand-ins, where no read or repair looks.)"""

    async def body() -> None:
        now = [1_000.0]
        cluster = await _sloppy(tmp_path, now)
        try:
            written = await _written_by_stand_ins(cluster)
            now[0] += 61.0  # the hints are older than the window at delivery
            assert await cluster.deliver_hints() == 0
            assert cluster.stats.hints_dropped == 3
            assert await cluster.hints.counts() == {}
            for stand_in in written.acks:  # handed back, then removed
                assert await _node(cluster, stand_in).read(b"cart") is None
            await cluster.anti_entropy()
            assert (await cluster.get("cart", r=3)).value == {"apple": 1}
        finally:
            await cluster.close()

    asyncio.run(body())


def test_an_expired_hint_whose_stand_in_is_down_waits_for_it(tmp_path: Path) -> None:
    """A hint past the window whose stand-in cannot be read is not dropped (the copy
    would stay stranded): it waits, the other hints of the home go on, and once the
    stand-in answers its copy goes home."""

    async def body() -> None:
        now = [1_000.0]
        cluster = await _sloppy(tmp_path, now)
        try:
            written = await _written_by_stand_ins(cluster)
            blocked = written.acks[0]
            _node(cluster, blocked).set_down(True)
            now[0] += 61.0
            assert await cluster.deliver_hints() == 0
            assert sum((await cluster.hints.counts()).values()) == 1  # the blocked one
            assert cluster.stats.hints_dropped == 2
            _node(cluster, blocked).set_down(False)
            now[0] += 10.0  # past the failure detector's probe delay
            await cluster.deliver_hints()
            assert await cluster.hints.counts() == {}
            assert await _node(cluster, blocked).read(b"cart") is None
            await cluster.anti_entropy()
            assert (await cluster.get("cart", r=3)).value == {"apple": 1}
        finally:
            await cluster.close()

    asyncio.run(body())


def test_a_stand_in_copy_for_a_home_down_past_the_window_keeps_its_hint(
    tmp_path: Path,
) -> None:
    """A home failing for longer than the window gets no new hints — except one that
    names the stand-in holding its copy, the only way back to that copy."""

    async def body() -> None:
        now = [1_000.0]
        cluster = await _sloppy(tmp_path, now, failure_threshold=1)
        try:
            homes = cluster.preference_list("cart")
            for name in homes:
                _node(cluster, name).set_down(True)
            await cluster.put("cart", {"apple": 1})  # the detector marks the homes down
            now[0] += 61.0  # the homes have been failing for longer than the window
            written = await cluster.put("cart", {"apple": 2})
            assert len(written.acks) == 2 and not set(written.acks) & set(homes)
            assert len(written.hinted) == 2  # the homes the stand-ins hold copies for
            for name in homes:
                _node(cluster, name).set_down(False)
            now[0] += 61.0
            await cluster.deliver_hints()
            assert await cluster.hints.counts() == {}
            await cluster.anti_entropy()
            assert (await cluster.get("cart", r=3)).value == {"apple": 2}
        finally:
            await cluster.close()

    asyncio.run(body())


def _refuse_hints(path: Path) -> None:
    """The hint store's file refuses new hints (a trigger: a real SQLite refusal)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(
            "CREATE TRIGGER no_hints BEFORE INSERT ON hints "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        conn.commit()


def test_a_hint_the_store_cannot_keep_does_not_fail_a_write_its_replicas_hold(
    tmp_path: Path,
) -> None:
    """Found by the explorer (quorum seed 1098 with read-modify-writes): a write that
    reached W of its homes raised the hint store's definite error though the replicas
    had applied it. Hints are best effort: the write is acknowledged, the hint counted
    as dropped, and anti-entropy brings the home that missed it up to date."""

    async def body() -> None:
        cluster = await QuorumCluster.embedded(
            tmp_path, 3, config=QuorumConfig(n=3, r=2, w=2), hint_window=60.0
        )
        try:
            _refuse_hints(tmp_path / "hints.db")
            home = cluster.preference_list("cart")[0]
            _node(cluster, home).set_down(True)
            written = await cluster.put("cart", {"apple": 1})
            assert home not in written.acks and len(written.acks) == 2
            assert written.hinted == ()
            assert cluster.stats.hints_dropped == 1
            _node(cluster, home).set_down(False)
            await cluster.anti_entropy()
            assert await _node(cluster, home).read(b"cart") is not None
            assert (await cluster.get("cart", r=3)).value == {"apple": 1}
        finally:
            await cluster.close()

    asyncio.run(body())


def test_a_write_whose_stand_in_hint_cannot_be_kept_is_indeterminate(tmp_path: Path) -> None:
    """In a sloppy quorum the hint is the only way back to a stand-in's copy: a write
    acknowledged by stand-ins whose hint cannot be kept fails, as indeterminate (the
    stand-ins hold it), never as definite."""

    async def body() -> None:
        cluster = await _sloppy(tmp_path, [1_000.0])
        try:
            _refuse_hints(tmp_path / "hints.db")
            for name in cluster.preference_list("cart"):
                _node(cluster, name).set_down(True)
            with pytest.raises(QuorumError) as failed:
                await cluster.put("cart", {"apple": 1})
            assert failed.value.outcome is Outcome.INDETERMINATE
            assert "hint could not be kept" in str(failed.value)
        finally:
            await cluster.close()

    asyncio.run(body())
