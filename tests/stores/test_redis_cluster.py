"""Redis Cluster behind the key-value interface: redirections, a primary killed, and
what Redis Cluster promises about acknowledged writes (with and without ``WAIT``).

The conformance suites (tests/stores/test_kv.py, test_widecolumn.py) and the
idempotency suite run on the same session cluster; this file holds what only a cluster
has. Every wait is bounded and polls a condition.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from multistore._resp import pack_command
from multistore.errors import Outcome, StoreError, StoreTimeoutError, UsageError
from multistore.lab._redis_cluster import RedisClusterServers, key_slot
from multistore.stores import open_store
from multistore.stores.kv import KeyValueStore
from multistore.stores.widecolumn import ClusteringColumn, TableSchema, WideColumnStore

pytestmark = pytest.mark.server

#: More than the socket buffers of a loopback link hold (a few MB each way).
FILLER = 16 * 1024 * 1024


async def _open(url: str) -> KeyValueStore:
    store = await open_store(url, model="kv")
    assert isinstance(store, KeyValueStore)
    return store


async def until_ok(op: Callable[[], Awaitable[Any]], within: float = 60.0) -> Any:
    """``op()`` retried on definite store errors until it succeeds, within a bound."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await op()
        except StoreError as exc:
            if exc.outcome is not Outcome.DEFINITE or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


def test_keys_spread_over_every_primary_and_scan_sees_them_all(redis_cluster_url: str) -> None:
    async def main() -> None:
        store = await _open(redis_cluster_url)
        try:
            keys = [f"user:{i}" for i in range(60)]
            for key in keys:
                await store.set(key, key)
            primaries = await store.native.primaries()
            assert len(primaries) == 3
            assert await store.scan("user:") == sorted(keys)
            assert await store.mget(keys) == [k.encode() for k in keys]
            assert await store.delete(*keys, "missing") == 60
        finally:
            await store.close()

    asyncio.run(main())


def test_a_script_over_several_slots_is_refused_before_it_runs(redis_cluster_url: str) -> None:
    async def main() -> None:
        store = await _open(redis_cluster_url)
        try:
            script = store.script("return redis.call('SET', KEYS[1], 'x')", name="two keys")  # type: ignore[attr-defined]
            a, b = "a", "b"
            assert key_slot(a) != key_slot(b)
            with pytest.raises(UsageError, match="hash tag"):
                await script([a, b])
            assert await store.get(a) is None
            await script(["{order-1}:x", "{order-1}:y"])  # one slot through a hash tag
            assert await store.get("{order-1}:x") == b"x"
        finally:
            await store.close()

    asyncio.run(main())


def test_ask_during_a_slot_migration_is_followed(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    key = "migrating-key"
    slot = key_slot(key)
    source = redis_cluster.primary_for(key)
    target = next(p for p in redis_cluster.primaries() if p.port != source.port)
    source_id, target_id = redis_cluster.node_id(source), redis_cluster.node_id(target)
    target.command("CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
    source.command("CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
    try:

        async def main() -> None:
            store = await _open(redis_cluster_url)
            try:
                # Not on the source: it answers ASK, and the write lands on the target.
                await store.set(key, "moved along")
                assert await store.get(key) == b"moved along"
            finally:
                await store.close()

        asyncio.run(main())
        assert target.command("CLUSTER", "COUNTKEYSINSLOT", str(slot)).startswith(b":1")
        assert source.command("CLUSTER", "COUNTKEYSINSLOT", str(slot)).startswith(b":0")
    finally:
        source.command("CLUSTER", "SETSLOT", str(slot), "STABLE")
        target.command("CLUSTER", "SETSLOT", str(slot), "STABLE")
        target.command("FLUSHALL")


def test_operations_continue_after_a_primary_is_killed(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    key = "counter"
    primary = redis_cluster.primary_for(key)

    async def main() -> None:
        store = await _open(redis_cluster_url + "/?timeout=2")
        try:
            assert await store.incr(key) == 1
            primary.kill()
            # Until a replica takes over, commands fail as definite (not sent) or the
            # client's retries outlast the failover; either way they go on after it.
            value = await until_ok(lambda: store.set("after", "failover"))
            assert value is None
            assert await store.get("after") == b"failover"
            assert await store.get(key) in (b"1", None)  # asynchronous replication
            assert await until_ok(lambda: store.incr("fresh")) == 1
        finally:
            await store.close()

    try:
        asyncio.run(main())
        promoted = redis_cluster.primary_for(key)
        assert promoted.port != primary.port
    finally:
        primary.start()
        redis_cluster.wait_replica_synced(primary)
        redis_cluster.wait_ok()


def test_wait_short_of_replicas_is_indeterminate_and_the_write_is_on_the_primary(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    key = "waited"
    primary = redis_cluster.primary_for(key)
    (replica,) = redis_cluster.replicas_of(primary)

    async def main() -> None:
        store = await _open(redis_cluster_url + "/?wait_replicas=1&wait_timeout=0.2")
        try:
            await store.set(key, "both")  # the replica acknowledges
            replica.pause()
            try:
                with pytest.raises(StoreTimeoutError) as info:
                    await store.set(key, "primary only")
                assert info.value.outcome is Outcome.INDETERMINATE
                assert "0 of 1 replicas" in str(info.value)
                assert await store.get(key) == b"primary only"
            finally:
                replica.resume()
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.parametrize("wait", [False, True])
def test_acknowledged_writes_across_a_failover(
    redis_cluster: RedisClusterServers, redis_cluster_url: str, wait: bool
) -> None:
    """What Redis Cluster promises: without WAIT a write the primary acknowledged is
    lost when the primary dies before its replica copied it; with WAIT such a write is
    never acknowledged (indeterminate), so no acknowledged write is lost."""
    key = "ledger"
    primary = redis_cluster.primary_for(key)
    (replica,) = redis_cluster.replicas_of(primary)
    url = redis_cluster_url + ("/?wait_replicas=1&wait_timeout=0.2" if wait else "")
    acknowledged: list[str] = []
    uncertain: list[str] = []

    async def write_while_replica_paused() -> None:
        store = await _open(url)
        try:
            await store.set(key, "before")
            redis_cluster.wait_replicated(primary)
            replica.pause()
            # A paused replica's kernel still takes in the replication stream: fill its
            # socket buffers first, so that what follows stays in the primary's memory
            # (as behind a slow or partitioned link) and dies with it.
            filler = await _open(redis_cluster_url + "/?timeout=120")
            try:  # on a client of its own: the whole write must reach the primary
                await filler.set("{ledger}:filler", b"x" * FILLER)
            finally:
                await filler.close()
            for value in ("during-1", "during-2"):
                try:
                    await store.set(key, value)
                    acknowledged.append(value)
                except StoreTimeoutError as exc:
                    assert exc.outcome is Outcome.INDETERMINATE
                    uncertain.append(value)
        finally:
            await store.close()

    async def read_after() -> bytes | None:
        store = await _open(redis_cluster_url)
        try:
            return await until_ok(lambda: store.get(key))  # type: ignore[no-any-return]
        finally:
            await store.close()

    try:
        asyncio.run(write_while_replica_paused())
        primary.kill()
        replica.resume()
        redis_cluster.wait_promoted(primary)
        after = asyncio.run(read_after())
    finally:
        replica.resume()
        primary.start()
        redis_cluster.wait_replica_synced(primary)
        redis_cluster.wait_ok()
    assert after == b"before"
    if wait:
        assert acknowledged == [] and uncertain == ["during-1", "during-2"]
    else:
        assert acknowledged == ["during-1", "during-2"]  # acknowledged, and lost


def test_a_wide_column_partition_stays_in_one_slot(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    schema = TableSchema(
        "readings",
        partition_key=("sensor",),
        clustering=(ClusteringColumn("ts", "desc"),),
        columns={"sensor": "text", "ts": "int", "value": "float"},
    )

    holders: dict[str, set[tuple[str, int]]] = {}

    async def main() -> None:
        store = await open_store(redis_cluster_url + "/?model=widecolumn")
        assert isinstance(store, WideColumnStore)
        try:
            await store.create_table(schema)
            for sensor in range(12):
                await store.upsert_many(
                    "readings",
                    [{"sensor": f"s{sensor}", "ts": t, "value": t / 2} for t in range(5)],
                )
            rows = await store.select("readings", {"sensor": "s3"}, where=[("ts", ">=", 2)])
            assert [r["ts"] for r in rows] == [4, 3, 2]
            cluster = store.native
            for address in await cluster.primaries():
                keys = await cluster.call_on(address, pack_command("KEYS", "wc:{readings.*"))
                assert isinstance(keys, list)
                for raw in keys:
                    key = bytes(raw).decode()
                    tag = key[key.index("{") : key.index("}") + 1]
                    holders.setdefault(tag, set()).add(address)
                    assert key_slot(key) == key_slot(tag[1:-1])
        finally:
            await store.close()

    asyncio.run(main())
    assert len(holders) == 12  # one tag per partition
    assert all(len(places) == 1 for places in holders.values())  # each on one primary
    assert len({p for places in holders.values() for p in places}) > 1  # spread over primaries


def test_a_paused_seed_does_not_hold_up_opening(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    # A node that accepts connections but answers nothing (SIGSTOP) listed first: the
    # slot table comes from the others. With a timeout this long, waiting for the
    # paused node would outlast the test's own limit.
    paused = redis_cluster.replicas_of(redis_cluster.primaries()[0])[0]
    others = [n for n in redis_cluster.nodes if n is not paused]
    hosts = ",".join(f"{n.host}:{n.port}" for n in [paused, *others])
    paused.pause()
    try:

        async def main() -> None:
            store = await _open(f"redis+cluster://{hosts}/?timeout=600")
            try:
                await store.set("reachable", "yes")
                assert await store.get("reachable") == b"yes"
            finally:
                await store.close()

        asyncio.run(main())
    finally:
        paused.resume()
