"""The quorum store's guarantees, each with the conditions it holds under, on embedded
SQLite nodes and on Redis servers (see :mod:`tests.replication.quorum_helpers`)."""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
from pathlib import Path

import pytest

from multistore.core import KeepSiblings, VersionVector
from multistore.core._hlc import HLCTimestamp
from multistore.core._quorum import Consistency
from multistore.errors import InvalidURLError, InvalidValueError, Outcome
from multistore.replication._qnodes import SQLiteNode
from multistore.replication._quorum import QuorumCluster, QuorumError
from multistore.replication._qwidecolumn import QuorumWideColumnStore
from tests.replication.quorum_helpers import (
    SLOPPY3,
    Topology,
    eventually,
    held,
    run,
)

SAME_MS = 1_700_000_000_000
"""A wall-clock reading two coordinators share: both write in the same millisecond."""


# -- coordinator identity -----------------------------------------------------------------


def test_coordinator_ids_are_unique_and_settable(tmp_path: Path) -> None:
    from multistore.replication._quorum import coordinator_id  # new: main had one id for all

    ids = {coordinator_id() for _ in range(1000)}
    assert len(ids) == 1000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a forked child draws a token of its own
        os.close(read)
        os.write(write, coordinator_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 200).decode()
    os.close(read)
    os.waitpid(pid, 0)
    mine = coordinator_id()
    assert child.split("-")[1] != mine.split("-")[1]

    async def body() -> None:
        options = "nodes=3&n=3&node_id=shop-eu-1&sloppy=true&read_from=fastest"
        url = f"quorum:///{tmp_path / 'wc'}?{options}"
        store = await QuorumWideColumnStore.open_url(url)
        other = await QuorumWideColumnStore.open_url(f"quorum:///{tmp_path / 'wc2'}?nodes=3")
        try:
            assert store.cluster.config.sloppy and not other.cluster.config.sloppy
            assert (store.cluster.read_from, other.cluster.read_from) == ("fastest", "random")
            assert store.cluster.node_id == "shop-eu-1"
            actor = store.cluster.actor
            assert actor.startswith("shop-eu-1/")  # and a part drawn for this object
            written = await store.cluster.put("k", 1)
            assert written.version.origin == actor
            assert written.version.hlc.node == actor
            assert other.cluster.node_id not in ("shop-eu-1", store.cluster.node_id)
            assert other.cluster.actor == other.cluster.node_id
        finally:
            await store.close()
            await other.close()

    asyncio.run(body())
    with pytest.raises(InvalidURLError, match="sloppy"):
        asyncio.run(QuorumWideColumnStore.open_url(f"quorum:///{tmp_path / 'x'}?sloppy=maybe"))


@pytest.mark.parametrize("resolver", ["lww", "siblings"])
def test_a_coordinator_restarted_with_its_node_id_never_reuses_a_stamp(
    tmp_path: Path, resolver: str
) -> None:
    """A coordinator opened again with the same ``node_id`` whose clock reads what it
    read before (a clock stepped back, or the earlier run's stamps pushed ahead by a
    context from a fast clock) must not stamp a write as one of the earlier run's: an
    equal stamp was refused by every replica yet acknowledged, and the read returned
    the earlier value (under ``KeepSiblings`` the earlier counter made the write look
    seen already)."""
    options: dict[str, object] = {"node_id": "shop-eu-1", "hlc_now_ms": lambda: SAME_MS}
    if resolver == "siblings":
        options["resolver"] = KeepSiblings()

    async def body() -> None:
        first = await QuorumCluster.embedded(tmp_path, nodes=3, **options)
        before = await first.put("k", "before the restart")
        await first.close()
        again = await QuorumCluster.embedded(tmp_path, nodes=3, **options)
        try:
            after = await again.put("k", "after the restart")
            assert after.version.hlc != before.version.hlc
            assert after.version.vv != before.version.vv
            found = (await again.get("k", r=Consistency.ALL)).values
            if resolver == "lww":  # the greater stamp wins, whichever run made it
                winner = max([before, after], key=lambda w: w.version.hlc)
                assert found == (winner.version.value["v"],)
            else:  # neither saw the other: siblings
                assert sorted(found) == ["after the restart", "before the restart"]
        finally:
            await again.close()

    asyncio.run(body())


async def _diverge(topo: Topology, a: QuorumCluster, b: QuorumCluster, keys: list[str]) -> None:
    """``a`` writes ``from-a`` to node0 and node1 while node2 is down, then ``b`` writes
    ``from-b`` to node2 while the other two are down: in the same millisecond."""
    topo.kill("node2")
    for key in keys:
        await a.put(key, "from-a", w=2)
    topo.revive("node2")
    topo.kill("node0")
    topo.kill("node1")
    for key in keys:
        await b.put(key, "from-b", w=1)
    topo.revive("node0")
    topo.revive("node1")
    for key in keys:
        records = await held(a, key)
        assert {rec[1].count(b"from-a") for rec in records.values() if rec} == {0, 1}


def _winner(a: QuorumCluster, b: QuorumCluster) -> str:
    """The value the greater stamp carries: same millisecond and counter, so the
    coordinator id breaks the tie."""
    stamp_a = HLCTimestamp(SAME_MS, 0, a.node_id)
    stamp_b = HLCTimestamp(SAME_MS, 0, b.node_id)
    return "from-a" if stamp_a > stamp_b else "from-b"


async def _identical(c: QuorumCluster, key: str, value: str) -> None:
    records = await held(c, key)
    assert len(set(records.values())) == 1, records  # byte for byte
    assert (await c.get(key, r=Consistency.ALL)).value == value


def test_two_coordinators_in_one_millisecond_converge(topo: Topology) -> None:
    """Regression: every coordinator was ``coordinator``, so two writes of one key in
    the same millisecond had equal stamps; replicas refused the second forever."""

    async def body() -> None:
        a = await topo.cluster(hlc_now_ms=lambda: SAME_MS, failure_threshold=99)
        b = await topo.cluster(hlc_now_ms=lambda: SAME_MS, failure_threshold=99)
        win = _winner(a, b)
        await _diverge(topo, a, b, ["repaired-on-read", "repaired-by-anti-entropy"])
        # read repair: a read at ALL leaves every replica with the winner
        got = await a.get("repaired-on-read", r=Consistency.ALL)
        assert got.value == win and got.repaired
        await _identical(a, "repaired-on-read", win)
        # anti-entropy: repairs, and then there is nothing left to repair
        report = await a.anti_entropy()
        assert report.keys_repaired >= 1
        await _identical(a, "repaired-by-anti-entropy", win)
        assert (await b.anti_entropy()).keys_repaired == 0
        # hinted handoff: each coordinator hands its hints over; the winner stays
        await _diverge(topo, a, b, ["handed-off"])
        await a.deliver_hints()
        await b.deliver_hints()
        assert not await a.hints.counts() and not await b.hints.counts()
        await _identical(a, "handed-off", win)

    run(topo, body)


def test_concurrent_writes_of_two_coordinators_stay_siblings(topo: Topology) -> None:
    """Regression: a shared version-vector actor let one coordinator's write supersede
    another's concurrent one under KeepSiblings."""

    async def body() -> None:
        a = await topo.cluster(resolver=KeepSiblings())
        b = await topo.cluster(resolver=KeepSiblings())
        await a.put("cart", {"apple": 1})
        base = await a.get("cart")
        await a.put("cart", {"apple": 2}, context=base.context)
        await b.put("cart", {"pear": 1}, context=base.context)
        both = await b.get("cart")
        assert sorted(map(str, both.values)) == ["{'apple': 2}", "{'pear': 1}"]
        await b.put("cart", {"apple": 2, "pear": 1}, context=both.context)
        assert (await a.get("cart", r=Consistency.ALL)).values == ({"apple": 2, "pear": 1},)
        # writes without a context from two coordinators are concurrent too
        await a.put("fresh", "a", context=VersionVector())
        await b.put("fresh", "b", context=VersionVector())
        assert sorted((await a.get("fresh")).values) == ["a", "b"]

    run(topo, body)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="the coordinator is the version-vector actor: its later write's vector covers "
    "its earlier one (docs/replication/quorum.md, limits)",
)
def test_two_writes_through_one_coordinator_from_one_read_stay_siblings(topo: Topology) -> None:
    """Two read-modify-writes of one key through one coordinator, both based on the same
    read: neither saw the other, so both must stay (today the later one supersedes the
    earlier, as if it had seen it)."""

    async def body() -> None:
        a = await topo.cluster(resolver=KeepSiblings())
        await a.put("cart", {"apple": 1})
        base = await a.get("cart")
        await a.put("cart", {"apple": 2}, context=base.context)
        await a.put("cart", {"pear": 1}, context=base.context)
        both = await a.get("cart", r=Consistency.ALL)
        assert sorted(map(str, both.values)) == ["{'apple': 2}", "{'pear': 1}"]

    run(topo, body)


@pytest.mark.parametrize("bad", [5, -1, "2", True, 1.0])
def test_a_bad_per_request_pw_or_pr_is_refused_before_anything_is_sent(
    tmp_path: Path, bad: object
) -> None:
    """``pw``/``pr`` out of [0, N] (or not an int), a context that is no version vector
    and an empty key are bad input: a clear error, and the write is not sent (on main
    pw=5 wrote every replica and then failed, pw="2" wrote them and raised TypeError, a
    dict context raised AttributeError and an empty bytes key was written)."""

    async def body() -> None:
        cluster = await QuorumCluster.embedded(tmp_path, 3)
        try:
            with pytest.raises(InvalidValueError, match="pw must be an int in"):
                await cluster.put("k", "v", pw=bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidValueError, match="pr must be an int in"):
                await cluster.get("k", pr=bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidValueError, match="context must be"):
                await cluster.put("k", "v", context={"a": 1})  # type: ignore[arg-type]
            with pytest.raises(InvalidValueError, match="non-empty"):
                await cluster.put(b"", "v")  # type: ignore[arg-type]
            for name in cluster.nodes:
                assert await cluster.node(name).read(b"k") is None
                assert await cluster.node(name).read(b"") is None
        finally:
            await cluster.close()

    asyncio.run(body())


@pytest.mark.parametrize(
    "option",
    [
        {"timeout": 0},
        {"timeout": -1.0},
        {"timeout": float("nan")},
        {"timeout": "1"},
        {"speculative_after": -1},
        {"hint_window": float("nan")},
        {"probe_after": float("inf")},
        {"probe_after": -1},
        {"failure_threshold": 0},
    ],
)
def test_a_setting_no_cluster_works_with_is_refused(
    tmp_path: Path, option: dict[str, float]
) -> None:
    """On main ``timeout=0`` (or NaN, or negative) was taken: every write was sent,
    applied on every replica, and failed as indeterminate."""

    async def body() -> None:
        with pytest.raises(InvalidValueError, match=next(iter(option))):
            await QuorumCluster.embedded(tmp_path, 3, **option)

    asyncio.run(body())


@pytest.mark.parametrize("bad", ["has space", ""])
def test_a_bad_coordinator_id_is_refused_and_nothing_stays_open(tmp_path: Path, bad: str) -> None:
    async def body() -> None:
        with pytest.raises(InvalidValueError, match="node id"):
            await QuorumCluster.embedded(tmp_path, nodes=3, node_id=bad)

    before = set(threading.enumerate())
    asyncio.run(body())
    workers = [t for t in threading.enumerate() if t not in before]
    for thread in workers:
        thread.join(timeout=5)
    assert not [t for t in workers if t.is_alive()]


# -- strict and sloppy quorums --------------------------------------------------------------


def test_strict_quorum_by_default_hints_never_count_toward_w(topo: Topology) -> None:
    """Regression: stand-ins counted toward W by default, so with two homes down a write
    was acknowledged by one home and a stand-in, and an R=2 read of the other two
    homes returned the old value."""
    now = [1000.0]

    async def body() -> None:
        c = await topo.cluster(m=5, failure_threshold=1, clock=lambda: now[0])
        key = "strict"
        homes = c.preference_list(key)
        others = [name for name in c.nodes if name not in homes]
        await c.put(key, "old", w=Consistency.ALL)
        topo.kill(homes[1])
        topo.kill(homes[2])
        with pytest.raises(QuorumError) as caught:
            await c.put(key, "new")
        assert caught.value.acks == (homes[0],)  # one home is not W=2; hints count nothing
        assert caught.value.outcome is Outcome.INDETERMINATE  # homes[0] holds it
        # now the detector knows: nothing is sent, and nothing will ever be applied
        with pytest.raises(QuorumError) as refused:
            await c.put(key, "never")
        assert refused.value.outcome is Outcome.DEFINITE and refused.value.acks == ()
        assert (await held(c, key, others)) == dict.fromkeys(others)  # no stand-in copies
        topo.revive(homes[1])
        topo.revive(homes[2])
        now[0] += 2  # past the detector's probe delay
        await c.deliver_hints()  # the unacknowledged "new" is handed to the other homes
        got = await c.get(key, r=Consistency.ALL)
        assert got.value == "new"
        assert all(b"never" not in rec[1] for rec in (await held(c, key)).values() if rec)

    run(topo, body)


def test_sloppy_quorum_stays_writable_and_reads_may_miss_until_handoff(topo: Topology) -> None:
    now = [1000.0]

    async def body() -> None:
        c = await topo.cluster(m=5, config=SLOPPY3, failure_threshold=1, clock=lambda: now[0])
        key = "sloppy"
        homes = c.preference_list(key)
        await c.put(key, "old", w=Consistency.ALL)
        topo.kill(homes[1])
        topo.kill(homes[2])
        result = await c.put(key, "new")  # stand-ins count: acknowledged
        assert len(result.acks) == 2 and set(result.acks) - set(homes)
        assert set(result.hinted) == {homes[1], homes[2]}
        topo.revive(homes[1])
        topo.revive(homes[2])
        now[0] += 2
        topo.kill(homes[0])
        # R + W > N, yet a read of the two other homes misses the acknowledged write
        assert (await c.get(key)).value == "old"
        await c.deliver_hints()
        assert (await c.get(key)).value == "new"
        assert not await c.hints.counts()

    run(topo, body)


# -- blocking read repair -------------------------------------------------------------------


def test_a_read_returns_a_value_only_once_r_replicas_hold_it(topo: Topology) -> None:
    """Regression: a failed read repair was swallowed: the read returned the new value
    though only one replica held it, and a later R=2 read could return the old one."""

    async def body() -> None:
        c = await topo.cluster(timeout=0.5, failure_threshold=99)
        key = "repair"
        first, second, third = c.preference_list(key)
        await c.put(key, "old", w=Consistency.ALL)
        topo.kill(second)
        topo.kill(third)
        with pytest.raises(QuorumError):  # "new" reaches one replica
            await c.put(key, "new")
        topo.revive(second)
        topo.revive(third)
        topo.kill(third)
        with topo.hold_writes(second):  # second answers reads, but cannot be repaired
            with pytest.raises(QuorumError) as caught:
                await c.get(key)  # R=2: first says "new", second "old"
            assert caught.value.outcome is Outcome.INDETERMINATE
            assert "repair" in str(caught.value)
        topo.revive(third)
        # the repair went through once the writes were let go: R=2 anywhere sees "new"
        await eventually(
            lambda: _holds(c, second, b"new"), "the held repair of the second replica applied"
        )
        topo.kill(first)
        assert (await c.get(key)).value == "new"
        # at R=1 a value held by the one replica asked is held by R replicas: no wait
        assert (await c.get(key, r=1)).value == "new"

    run(topo, body)


async def _holds(c: QuorumCluster, node: str, value: bytes) -> bool:
    record = await c.node(node).read(b"repair")
    return record is not None and value in record[1]


# -- definite and indeterminate failures ------------------------------------------------------


def test_a_write_that_timed_out_everywhere_is_indeterminate(topo: Topology) -> None:
    """Regression: with no acknowledgement the error was DEFINITE even when every
    replica timed out after applying, and the next read returned the value."""

    async def body() -> None:
        c = await topo.cluster(timeout=0.3, failure_threshold=99)
        await c.put("k", "before", w=Consistency.ALL)
        # each replica applies the write only once the block ends
        with topo.hold_writes(*c.nodes), pytest.raises(QuorumError) as caught:
            await c.put("k", "after")
        assert caught.value.acks == () and caught.value.outcome is Outcome.INDETERMINATE
        await eventually(lambda: _reads(c, "k", "after"), "the timed-out write applied")

    run(topo, body)


def test_a_write_every_replica_refused_is_definite(topo: Topology) -> None:
    async def body() -> None:
        c = await topo.cluster(failure_threshold=99)
        await c.put("k", "before", w=Consistency.ALL)
        for name in c.nodes:
            topo.kill(name)
        with pytest.raises(QuorumError) as caught:
            await c.put("k", "refused")
        assert caught.value.outcome is Outcome.DEFINITE
        assert not await c.hints.counts()  # nothing kept that could apply it later
        for name in c.nodes:
            topo.revive(name)
        await c.deliver_hints()
        assert (await c.get("k", r=Consistency.ALL)).value == "before"

    run(topo, body)


async def _reads(c: QuorumCluster, key: str, value: str) -> bool:
    return bool((await c.get(key, r=Consistency.ALL)).value == value)


# -- writes with a context ------------------------------------------------------------------


def test_a_write_with_a_context_wins_over_what_it_read_whatever_the_clock(
    topo: Topology,
) -> None:
    """Regression: the coordinator's clock never observed what it read, so a
    read-modify-write from a coordinator 2 s behind lost, under LWW, to the very value
    it had read."""

    async def body() -> None:
        ahead = await topo.cluster()
        behind = await topo.cluster(hlc_now_ms=lambda: time.time_ns() // 1_000_000 - 2000)
        await ahead.put("counter", 1)
        got = await behind.get("counter")
        written = await behind.put("counter", got.value + 1, context=got.context)
        assert (await ahead.get("counter", r=Consistency.ALL)).value == 2
        assert written.version.hlc > got.versions[0].hlc
        # a context covering several coordinators' versions: after all of them
        third = await topo.cluster(hlc_now_ms=lambda: 5)
        both = await third.get("counter")
        again = await third.put("counter", 3, context=both.context)
        assert again.version.hlc > written.version.hlc
        assert (await behind.get("counter", r=Consistency.ALL)).value == 3
        # a write without a context is stamped by its coordinator's clock alone
        late = await topo.cluster(hlc_now_ms=lambda: 5)
        await late.put("counter", 4)
        assert (await ahead.get("counter", r=Consistency.ALL)).value == 3

    run(topo, body)


def test_a_context_that_no_write_made_is_refused(tmp_path: Path) -> None:
    async def body() -> None:
        c = await QuorumCluster.embedded(tmp_path, nodes=3)
        try:
            with pytest.raises(InvalidValueError, match="context counter"):
                await c.put("k", 1, context=VersionVector({"x": 2**80}))
            assert not (await c.get("k")).found
        finally:
            await c.close()

    asyncio.run(body())


# -- hinted handoff -------------------------------------------------------------------------


def test_handing_off_a_hint_never_drops_a_write_below_w_copies(topo: Topology) -> None:
    """Regression: delivering a hint removed the stand-in's copy, though that copy was
    a newer write that only it and one home held: an acknowledged W=2 write was left
    on one node."""

    async def body() -> None:
        x = await topo.cluster(m=4, config=SLOPPY3, failure_threshold=99)
        y = await topo.cluster(m=4, config=SLOPPY3, failure_threshold=99)
        key = "handoff"
        first, second, third = x.preference_list(key)
        (stand_in,) = set(x.nodes) - {first, second, third}
        topo.kill(third)
        await x.put(key, "v1")  # first, second, and the stand-in for third
        await x.wait_background()
        assert [h.fallback for h in await x.hints.pending(third)] == [stand_in]
        topo.kill(second)
        written = await y.put(key, "v2")  # first and the stand-in: W=2
        assert set(written.acks) == {first, stand_in}
        topo.revive(third)
        assert await x.deliver_hints() == 1  # x hands its v1 to third
        holding = [n for n, rec in (await held(x, key)).items() if rec and b'"v2"' in rec[1]]
        assert len(holding) >= 2, f"v2, acknowledged at W=2, is left on {holding}"
        topo.revive(second)
        await y.deliver_hints()
        assert (await x.get(key, r=Consistency.ALL)).value == "v2"
        assert (await held(x, key))[stand_in] is None  # handed back at last

    run(topo, body)


# -- where reads go -----------------------------------------------------------------------


def test_reads_spread_over_the_replicas(topo: Topology) -> None:
    """Regression: an R=1 read always asked the key's first home (a hotspot, and it hid
    monotonic-read violations)."""

    async def body() -> None:
        c = await topo.cluster()
        await c.put("hot", 1, w=Consistency.ALL)
        served = collections.Counter()
        for _ in range(60):
            got = await c.get("hot", r=1)
            assert got.value == 1
            served.update(got.replicas)
        assert set(served) == set(c.preference_list("hot")), served

    run(topo, body)


def test_reads_can_go_to_the_fastest_replicas(tmp_path: Path) -> None:
    async def body() -> None:
        c = await QuorumCluster.embedded(tmp_path, nodes=3, read_from="fastest")
        try:
            slow = c.node("node1")
            assert isinstance(slow, SQLiteNode)
            await c.put("k", 1, w=Consistency.ALL)  # every node's latency is measured
            slow.set_delay(0.05)
            await c.put("k", 2, w=Consistency.ALL)
            for _ in range(20):
                got = await c.get("k")
                assert got.value == 2 and "node1" not in got.replicas
        finally:
            await c.close()
        with pytest.raises(InvalidValueError, match="read_from"):
            await QuorumCluster.embedded(tmp_path / "x", nodes=3, read_from="nearest")  # type: ignore[arg-type]

    asyncio.run(body())
